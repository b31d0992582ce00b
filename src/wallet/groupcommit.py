"""Group commit: the money-moving requests a worker has in hand at the same moment go to the database together,
as one transaction of the item path (a batch that is not atomic), so that they share one round trip and one
commit, the way TigerBeetle batches its clients' requests.

No timer is involved, so nothing waits at low load: a request goes out at once when fewer than `groups_max`
groups are on their way to the database; otherwise it waits for the next group, which takes everything that came
meanwhile (up to `items_max`). Under load, groups grow by themselves; alone, a request is a group of one and takes
the single path. Each request keeps its own idempotency key, attempt id and outcome, and is answered only once
its group has committed. A group that fails as a whole (the database went away, a conflict that outlived its
retries) is tried again request by request, so that one request cannot fail the others.
"""

import asyncio
import logging

from wallet import ledger
from wallet.database import Database
from wallet.errors import WalletError
from wallet.ledger import Outcome, Request

log = logging.getLogger("wallet.groupcommit")


class GroupCommit:
    def __init__(self, database: Database, items_max: int, groups_max: int) -> None:
        self._database = database
        self._items_max = items_max
        self._groups_max = groups_max
        self._waiting: list[tuple[Request, asyncio.Future[Outcome]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def post(self, request: Request) -> Outcome:
        if self._items_max <= 1:  # group commit off
            return await ledger.post(self._database, request)
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        self._send()
        return await answer

    def _send(self) -> None:
        while self._waiting and len(self._in_flight) < self._groups_max:
            group, self._waiting = self._waiting[: self._items_max], self._waiting[self._items_max :]
            task = asyncio.create_task(self._post(group))
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._send()

    async def _post(self, group: list[tuple[Request, asyncio.Future[Outcome]]]) -> None:
        requests = [request for request, _ in group]
        try:
            if len(requests) == 1:
                outcomes = [await ledger.post(self._database, requests[0])]
            else:
                outcomes = await ledger.post_batch(self._database, False, requests)
        except WalletError as exc:
            if len(group) == 1:
                _answer(group[0][1], exc)
                return
            log.warning("a group of %d failed (%s); each request alone", len(group), exc.code)
            await asyncio.gather(*(self._alone(request, answer) for request, answer in group))
            return
        except BaseException as exc:  # a bug, or cancelled at shutdown: no request may wait forever
            for _, answer in group:
                _answer(answer, exc)
            raise
        for (_, answer), outcome in zip(group, outcomes, strict=True):
            _answer(answer, outcome)

    async def _alone(self, request: Request, answer: asyncio.Future[Outcome]) -> None:
        try:
            outcome = await ledger.post(self._database, request)
        except WalletError as exc:
            _answer(answer, exc)
        else:
            _answer(answer, outcome)


def _answer(answer: asyncio.Future[Outcome], result: Outcome | BaseException) -> None:
    if answer.done():  # the client went away, and its handler with it; what was written stays written
        return
    if isinstance(result, BaseException):
        answer.set_exception(result)
    else:
        answer.set_result(result)
