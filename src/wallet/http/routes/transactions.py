"""GET /v1/transactions/{id}: a transaction, as its POST returned it."""

from fastapi import APIRouter, Depends, Request, Response

from wallet import ledger
from wallet.http.auth import require
from wallet.http.openapi import responses
from wallet.http.services import database
from wallet.models import Transaction

router = APIRouter(tags=["transactions"])


@router.get(
    "/v1/transactions/{transaction_id}",
    response_model=Transaction,
    responses=responses(200, Transaction, "The transaction, as its POST returned it.", "transaction_not_found"),
    dependencies=[Depends(require("read"))],
)
async def get_transaction(request: Request, transaction_id: str) -> Response:
    return Response(await ledger.get_transaction(database(request), transaction_id), media_type="application/json")
