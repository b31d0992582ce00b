"""Ledger schema: assets, users, accounts, transactions, entries, idempotency keys, API keys, engine.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from wallet.migrations.sql import run_sql_beside

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
