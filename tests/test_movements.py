"""Top-ups, bonuses and purchases over HTTP, in accounting terms."""

import httpx

from tests.conftest import Keys


def post(client: httpx.AsyncClient, keys: Keys, path: str, key: str, body: dict[str, object], scope: str = "admin"):
    return client.post(path, json=body, headers={**keys.headers(scope), "Idempotency-Key": key})


async def test_topup_debits_treasury_and_credits_user(client: httpx.AsyncClient, api_keys: Keys, new_user: str) -> None:
    response = await post(
        client,
        api_keys,
        "/v1/topups",
        f"t-{new_user}",
        {"user_id": new_user, "asset": "GOLD", "amount": 250, "description": "Pack of 250"},
    )
    assert response.status_code == 201, response.text
    tx = response.json()
    assert tx["type"] == "topup" and tx["status"] == "posted" and tx["amount"] == 250
    assert tx["balance_after"] == 250
    assert tx["entries"] == [
        {"account": f"user:{new_user}", "amount": 250},
        {"account": "system:treasury", "amount": -250},
    ]
    fetched = await client.get(f"/v1/transactions/{tx['id']}", headers=api_keys.headers("read"))
    assert fetched.status_code == 200
    assert fetched.content == response.content


async def test_purchase_beyond_balance_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, api_keys: Keys, new_user: str
) -> None:
    await post(client, api_keys, "/v1/topups", f"t-{new_user}", {"user_id": new_user, "asset": "GOLD", "amount": 40})
    refused = await post(
        client, api_keys, "/v1/purchases", f"p-{new_user}", {"user_id": new_user, "asset": "GOLD", "amount": 41}
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "insufficient_funds"
    balance = await client.get(f"/v1/users/{new_user}/balances/GOLD", headers=api_keys.headers("read"))
    assert balance.json() == {"user_id": new_user, "asset": "GOLD", "balance": 40}
