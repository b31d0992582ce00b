"""Ledger schema: assets, users, accounts, transactions, entries, idempotency keys, API keys, engine.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Straight to the driver with no parameters, so that the SQL's own % and : are left as written.
    with op.get_bind().connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(Path(__file__).with_suffix(".sql").read_text())
