"""Statistics: per-account rollups of user entries, kept by the maintenance loop, for statistics of any window.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from wallet.migrations.sql import run_sql_beside

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
