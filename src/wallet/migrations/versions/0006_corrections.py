"""Corrections to the engine: wallet_stripe_gather() leaves the gathering stripe at least the room it gathers for
(0004 rounded the other stripes' share to the nearest), and wallet_refund_posting() locks the user's accounts before
the original's counter of refunds (0005 took them in the other order).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from wallet.migrations.sql import run_sql_beside

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_beside(__file__)
