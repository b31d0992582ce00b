"""The answers of money-moving requests: a posting (of any kind) sent under its idempotency key, and what it came
to as a response: the transaction (201), or its problem, with `Idempotent-Replayed` on a replay."""

import uuid
from typing import Any

import orjson
from fastapi import Request, Response

from wallet import ledger
from wallet.errors import PROBLEM_MEDIA_TYPE
from wallet.holds import HoldOutcome
from wallet.http import body, problems
from wallet.http.envelope import context
from wallet.http.services import services
from wallet.keys import ApiKey
from wallet.ledger import Caller, Outcome, Posting
from wallet.render import public_id

JSON = "application/json"


def caller(key: ApiKey) -> Caller:
    return Caller(key.id, key.name, uuid.uuid4())  # the attempt id is the same across the service's own retries


def _replayed(kind: str) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if kind == "replayed" else {}


def failure(outcome: Outcome | HoldOutcome, idempotency_key: str, endpoint: str, sent: dict[str, Any]) -> Response:
    document = problems.of_outcome(outcome, idempotency_key, endpoint, sent)
    return Response(orjson.dumps(document), document["status"], _replayed(outcome.kind), media_type=PROBLEM_MEDIA_TYPE)


async def posting(request: Request, key: ApiKey, posting: Posting) -> Response:
    """Posts it (coalesced with the worker's other requests of the moment: group commit) and answers."""
    idempotency_key = body.idempotency_key(request)
    outcome = await services(request).group_commit.post(ledger.Request(caller(key), idempotency_key, posting))
    if outcome.transaction is None:
        return failure(outcome, idempotency_key, posting.endpoint, posting.request())
    context(request.scope).transaction_id = public_id(outcome.transaction.id)
    return Response(outcome.transaction.render(), 201, _replayed(outcome.kind), media_type=JSON)


def hold(outcome: HoldOutcome, idempotency_key: str, endpoint: str, sent: dict[str, Any], status: int) -> Response:
    if outcome.hold is None:
        return failure(outcome, idempotency_key, endpoint, sent)
    return Response(outcome.hold.render(), status, _replayed(outcome.kind), media_type=JSON)
