"""Bench data made directly in SQL: users in bulk, and funding through the posting engine itself."""

import psycopg

from wallet.kinds import KINDS

USER_PREFIX = "u"  # bench users are u1 .. uN
HOT_USER = "hot"
BENCH_KEY_NAME = "bootstrap"  # the admin key `wallet serve` ensures from WALLET_BOOTSTRAP_KEY


def wallet_item_sql(kind: str, *, key_id: str, key_name: str, key: str, user: str, asset: str, amount: str) -> str:
    """A `wallet_item` as the service sends one money-moving request of `kind` (ledger.post), with SQL expressions
    for its varying parts (each may appear several times: give columns, not volatile calls). The legs come from
    the service's registry."""
    posting_kind = KINDS[kind]
    (user_account, user_sign), (system_account, _) = posting_kind.legs("U", 1)
    assert user_account == "user:U"
    # pgbench reads ":name" inside a string literal as a variable: the colons of account names are spelled chr(58).
    system = "'" + system_account.replace(":", "' || chr(58) || '") + "'"
    request = (
        f"jsonb_build_object('user_id', {user}, 'asset', {asset}, 'amount', {amount}::bigint,"
        " 'description', NULL, 'metadata', '{}'::jsonb)"
    )
    posting = (
        f"ROW('{kind}', {user}, {asset}, {amount}::bigint, NULL, '{{}}'::jsonb,"
        f" ARRAY['user' || chr(58) || {user}, {system}], ARRAY[{asset}, {asset}],"
        f" ARRAY[{user_sign} * {amount}::bigint, {-user_sign} * {amount}::bigint],"
        " NULL, NULL, NULL, false)::wallet_posting"
    )
    return (
        f"ROW({key_id}::bigint, {key_name}::text, gen_random_uuid(), {key}, '{posting_kind.endpoint}', {request},"
        f" {posting})::wallet_item"
    )


def wallet_request_sql(kind: str, *, key_id: str, key_name: str, key: str, user: str, asset: str, amount: str) -> str:
    """The call the service makes for one money-moving request of `kind`: `wallet_request()` with a `wallet_item`
    (see wallet_item_sql)."""
    item = wallet_item_sql(kind, key_id=key_id, key_name=key_name, key=key, user=user, asset=asset, amount=amount)
    return f"wallet_request({item})"


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
           INSERT INTO accounts (kind, name, asset, user_id, lots)
           SELECT 'user', 'user:' || c.user_id, a.code, c.user_id, a.lots FROM created c CROSS JOIN assets a""",
        {"prefix": USER_PREFIX, "count": count},
    )
    conn.execute("ANALYZE users, accounts")


def top_up(conn: psycopg.Connection, key_id: int, users_sql: str, amount: int, key_prefix: str) -> int:
    """Tops up each user that `users_sql` (a query of one column `user_id`) yields, through wallet_request();
    returns how many were posted."""
    call = wallet_request_sql(
        "topup",
        key_id=str(key_id),
        key_name=f"'{BENCH_KEY_NAME}'",
        key=f"'{key_prefix}' || u.user_id",
        user="u.user_id",
        asset="'GOLD'",
        amount=str(amount),
    )
    row = conn.execute(f"SELECT count(*) FROM ({users_sql}) u, LATERAL {call} r WHERE r.outcome = 'created'").fetchone()
    assert row is not None
    return int(row[0])


def fund_users(conn: psycopg.Connection, key_id: int, count: int, amount: int, key_prefix: str) -> int:
    return top_up(
        conn, key_id, f"SELECT '{USER_PREFIX}' || g AS user_id FROM generate_series(1, {count}) g", amount, key_prefix
    )


def create_hot_user(conn: psycopg.Connection, key_id: int, funds: int, key_prefix: str) -> None:
    conn.execute(
        """WITH created AS (INSERT INTO users (user_id) VALUES (%(user)s) RETURNING user_id)
           INSERT INTO accounts (kind, name, asset, user_id, lots)
           SELECT 'user', 'user:' || c.user_id, a.code, c.user_id, a.lots FROM created c CROSS JOIN assets a""",
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
