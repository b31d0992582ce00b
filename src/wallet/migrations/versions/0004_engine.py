"""The engine, second edition: one item path for single requests and batches, striped system accounts with
bounded issuance, the idempotency record written once with its outcome.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from wallet.migrations.sql import run_sql_beside

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
