"""Capabilities I: holds, refunds and reversals, purchases with rewards, adjustments, frozen users, balances as of
an instant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from wallet.migrations.sql import run_sql_beside

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
