"""Operations: verify reports kept for the console and /metrics, a BRIN index for volume over recent hours, users
found by the start of their id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from wallet.migrations.sql import run_sql_beside

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
