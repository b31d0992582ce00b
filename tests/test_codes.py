"""One place decides each thing: the HTTP status of every problem code (errors.CODES, which every code the SQL
engine can write must be in), and each bound (one SQL function, one Python constant, agreeing)."""

import re
import uuid
from pathlib import Path

import asyncpg

from wallet import keys, models
from wallet.errors import CODES
from wallet.kinds import KINDS

VERSIONS = Path(__file__).resolve().parent.parent / "src" / "wallet" / "migrations" / "versions"


def test_every_problem_code_the_sql_can_write_has_a_status() -> None:
    written = set()
    for path in sorted(VERSIONS.glob("*.sql")):
        written |= set(re.findall(r"wallet_problem\(\s*'([a-z_]+)'", path.read_text()))
    assert {"user_not_found", "insufficient_funds", "supply_limit_exceeded"} <= written, written
    assert written - set(CODES) == set()


async def test_no_status_is_decided_in_the_database(db: asyncpg.Connection) -> None:
    """The engine returns codes only; the idempotency record keeps no status (it follows from the outcome)."""
    assert await db.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'wallet_error_status'") == 0
    columns = await db.fetch("SELECT attname FROM pg_attribute WHERE attrelid = 'idempotency_keys'::regclass")
    assert "status" not in {row["attname"] for row in columns}


async def test_each_bound_is_one_sql_function_that_python_agrees_with(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT wallet_balance_max()") == models.BALANCE_MAX
    assert await db.fetchval("SELECT wallet_issuance_max()") == models.ISSUANCE_MAX
    # Two issuers of an asset at their floor: every other balance, and every sum, still fits a bigint.
    assert 2 * models.ISSUANCE_MAX < 2**63
    # The table's own CHECK writes the bound as a number (a function there would be planned at every write).
    check = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'accounts'::regclass"
        " AND conname = 'account_kinds'"
    )
    assert re.findall(r"balance <= '(\d+)'", check) == [str(models.BALANCE_MAX)], check


async def test_every_scope_of_the_registry_is_one_the_schema_accepts(db: asyncpg.Connection) -> None:
    """A kind with a new scope needs a revision that widens api_keys' CHECK: this fails until it has one."""
    async with db.transaction():
        secret = await keys.create(db, f"every-scope-{uuid.uuid4().hex[:8]}", list(keys.SCOPES))
        found = await keys.find(db, keys.hash_secret(secret))
        assert found is not None and found.scopes == frozenset(keys.SCOPES)
        assert {kind.scope for kind in KINDS.values()} <= found.scopes
