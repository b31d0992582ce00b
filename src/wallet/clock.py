"""What time it is for what the service does by the clock (the expiry of lots, webhook retries): the database's
`now()` unless a test moves it. A clock returns None for the database's time."""

from collections.abc import Callable
from datetime import datetime

Clock = Callable[[], datetime | None]


def database_clock() -> datetime | None:
    return None
