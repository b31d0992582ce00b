"""Transactions: one as its POST returned it, and refunds (reversals) of it."""

from fastapi import APIRouter, Depends, Request, Response

from wallet import reads
from wallet.errors import TransactionNotFound
from wallet.http import answers, body, openapi
from wallet.http.auth import require
from wallet.http.documents import Refunds, Transaction
from wallet.http.openapi import responses
from wallet.http.routes.movements import POSTING_CODES, with_link
from wallet.http.services import database
from wallet.keys import ApiKey
from wallet.ledger import Refund
from wallet.models import RefundRequest
from wallet.render import parse_public_id

router = APIRouter(tags=["transactions"])
JSON = "application/json"
REFUND_CODES = (
    "transaction_not_found",
    "refund_exceeds_original",
    "not_refundable",
    "insufficient_funds",
    "account_frozen",
)


@router.get(
    "/v1/transactions/{transaction_id}",
    response_model=Transaction,
    responses=responses(200, Transaction, "The transaction, as its POST returned it.", "transaction_not_found"),
    dependencies=[Depends(require("read"))],
)
async def get_transaction(request: Request, transaction_id: str) -> Response:
    return Response(await reads.get_transaction(database(request), transaction_id), media_type=JSON)


@router.post(
    "/v1/transactions/{transaction_id}/refunds",
    response_model=Transaction,
    status_code=201,
    summary="Refund a purchase (purchase scope), or reverse a top-up or a bonus (admin scope)",
    openapi_extra={**openapi.body(RefundRequest), "parameters": [openapi.IDEMPOTENCY_KEY_HEADER]},
    responses=with_link(responses(201, Transaction, "The refund, posted.", *POSTING_CODES, *REFUND_CODES)),
)
async def refund(request: Request, transaction_id: str, key: ApiKey = Depends(require("purchase"))) -> Response:
    original = parse_public_id(transaction_id)
    if original is None:
        raise TransactionNotFound(f"Transaction {transaction_id[:64]} does not exist.")
    sent = await body.read(request, RefundRequest)
    return await answers.posting(request, key, Refund(original, sent.amount, sent.reason))


@router.get(
    "/v1/transactions/{transaction_id}/refunds",
    response_model=Refunds,
    responses=responses(200, Refunds, "The refunds of the transaction, oldest first.", "transaction_not_found"),
    dependencies=[Depends(require("read"))],
)
async def get_refunds(request: Request, transaction_id: str) -> Response:
    return Response(await reads.get_refunds(database(request), transaction_id), media_type=JSON)
