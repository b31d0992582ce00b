"""Events: the outbox (transactions are their own event; holds, users, monitors and webhooks write theirs), the
feed in commit order, webhook endpoints and their deliveries, balance monitors.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from wallet.migrations.sql import run_sql_beside

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
