"""Rate limits per API key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from wallet.migrations.sql import run_sql_beside

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
