"""Batches: wallet_batch(), many operations in one transaction with per-item idempotency.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from wallet.migrations.sql import run_sql_beside

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
