"""Bench data made directly in SQL: users in bulk, and funding through the posting engine itself."""

import psycopg

USER_PREFIX = "u"  # bench users are u1 .. uN
HOT_USER = "hot"
BENCH_KEY_NAME = "bootstrap"  # the admin key `wallet serve` ensures from WALLET_BOOTSTRAP_KEY

# The call the service makes for one money-moving request (src/wallet/ledger.py `execute`), with the request
# fingerprint shaped like `Movement.request()`. Arguments go by name, read from the function's signature, so
# that the bench follows the engine as it changes; `{...}` stand for the SQL expressions of the varying parts.
ARGUMENTS = {
    "p_attempt_id": "gen_random_uuid()",  # the service draws one uuid4 per request
    "p_api_key_id": "{key_id}::bigint",
    "p_api_key_name": "{key_name}::text",
    "p_key": "{key}::text",
    "p_endpoint": "{endpoint}::text",
    "p_request": "jsonb_build_object('user_id', {user}::text, 'asset', {asset}::text, 'amount', {amount}::bigint, "
    "'description', {description}::text, 'metadata', '{{}}'::jsonb)",
    "p_type": "{type}::text",
    "p_asset": "{asset}::text",
    "p_user_id": "{user}::text",
    "p_amount": "{amount}::bigint",
    "p_accounts": "ARRAY['user:' || {user}, {system}::text]",
    "p_amounts": "ARRAY[{sign} * {amount}::bigint, -{sign} * {amount}::bigint]",
    "p_description": "{description}::text",
    "p_metadata": "'{{}}'::jsonb",
}
SYSTEM_SIDE = {"topup": ("'system:treasury'", "1"), "purchase": ("'system:revenue'", "-1")}
ENDPOINT = {"topup": "'POST /v1/topups'", "purchase": "'POST /v1/purchases'"}


def wallet_request_sql(conn: psycopg.Connection, operation: str, **values: str) -> str:
    """`wallet_request(...)` for a top-up or a purchase, with SQL expressions for its varying parts."""
    row = conn.execute(
        "SELECT proargnames, proargmodes FROM pg_proc WHERE proname = 'wallet_request' AND prokind = 'f'"
    ).fetchone()
    assert row is not None, "the database has no wallet_request()"
    names, modes = row
    inputs = [name for name, mode in zip(names, modes or ["i"] * len(names), strict=True) if mode in ("i", "b")]
    unknown = [name for name in inputs if name not in ARGUMENTS]
    if unknown:
        raise RuntimeError(f"wallet_request() has arguments the bench does not know: {', '.join(unknown)}")
    system, sign = SYSTEM_SIDE[operation]
    filled = {"type": f"'{operation}'", "endpoint": ENDPOINT[operation], "system": system, "sign": sign, **values}
    arguments = ", ".join(f"{name} => {ARGUMENTS[name].format(**filled)}" for name in inputs)
    return f"wallet_request({arguments})"


def bench_key(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT id FROM api_keys WHERE name = %s", (BENCH_KEY_NAME,)).fetchone()
    assert row is not None, "wallet serve did not create the bootstrap key"
    return int(row[0])


def create_users(conn: psycopg.Connection, count: int) -> None:
    """u1 .. u<count>, with one account per asset, in one statement."""
    conn.execute(
        """WITH created AS (
               INSERT INTO users (user_id) SELECT %(prefix)s || g FROM generate_series(1, %(count)s) g
               RETURNING user_id
           )
           INSERT INTO accounts (kind, name, asset, user_id)
           SELECT 'user', 'user:' || c.user_id, a.code, c.user_id FROM created c CROSS JOIN assets a""",
        {"prefix": USER_PREFIX, "count": count},
    )
    conn.execute("ANALYZE users, accounts")


def top_up(conn: psycopg.Connection, key_id: int, users_sql: str, amount: int, key_prefix: str) -> int:
    """Tops up each user that `users_sql` (a query of one column `user_id`) yields, through wallet_request();
    returns how many were posted."""
    call = wallet_request_sql(
        conn,
        "topup",
        key_id=str(key_id),
        key_name=f"'{BENCH_KEY_NAME}'",
        key=f"'{key_prefix}' || u.user_id",
        user="u.user_id",
        asset="'GOLD'",
        amount=str(amount),
        description="'bench funding'",
    )
    row = conn.execute(f"SELECT count(*) FROM ({users_sql}) u, LATERAL {call} r WHERE r.status = 201").fetchone()
    assert row is not None
    return int(row[0])


def fund_users(conn: psycopg.Connection, key_id: int, count: int, amount: int, key_prefix: str) -> int:
    return top_up(
        conn, key_id, f"SELECT '{USER_PREFIX}' || g AS user_id FROM generate_series(1, {count}) g", amount, key_prefix
    )


def create_hot_user(conn: psycopg.Connection, key_id: int, funds: int, key_prefix: str) -> None:
    conn.execute(
        """WITH created AS (INSERT INTO users (user_id) VALUES (%(user)s) RETURNING user_id)
           INSERT INTO accounts (kind, name, asset, user_id)
           SELECT 'user', 'user:' || c.user_id, a.code, c.user_id FROM created c CROSS JOIN assets a""",
        {"user": HOT_USER},
    )
    posted = top_up(conn, key_id, f"SELECT '{HOT_USER}' AS user_id", funds, key_prefix)
    assert posted == 1


def hot_user_state(conn: psycopg.Connection) -> tuple[int, int]:
    """(purchases committed, GOLD balance) of the hot user."""
    row = conn.execute(
        """SELECT (SELECT count(*) FROM transactions WHERE user_id = %(user)s AND type = 'purchase'),
                  (SELECT balance FROM accounts WHERE name = 'user:' || %(user)s AND asset = 'GOLD')""",
        {"user": HOT_USER},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
