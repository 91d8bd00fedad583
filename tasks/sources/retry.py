"""Retries for the real archives: back off with jitter on transient failures, never on 401/403/404."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Callable, TypeVar

from tasks.sources.credentials import MissingCredentials, redact

log = logging.getLogger(__name__)
T = TypeVar("T")

PERMANENT_STATUS = {400, 401, 403, 404}
_STATUS_IN_TEXT = re.compile(r"\b(40[0134])\b")


class PermanentSourceError(RuntimeError):
    """A request the archive will refuse again (bad credentials, licence not accepted, no such data)."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception from requests, earthaccess or cdsapi, when one is known."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return code
    m = _STATUS_IN_TEXT.search(str(exc))
    return int(m.group(1)) if m else None


def is_permanent(exc: BaseException) -> bool:
    # Missing credentials will be just as missing in two minutes.
    return (isinstance(exc, (PermanentSourceError, MissingCredentials))
            or http_status(exc) in PERMANENT_STATUS)


def with_retries(call: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 2.0,
                 max_delay: float = 120.0, sleep: Callable[[float], None] | None = None,
                 rng: random.Random | None = None,
                 passthrough: tuple[type[BaseException], ...] = ()) -> T:
    """Run `call`; on a transient failure wait base*2^k (full jitter) and try again.

    Exceptions in `passthrough` are answers, not failures (e.g. 'no such granule yet'): re-raised at once.
    """
    rng = rng or random.Random()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, MissingCredentials):
                raise
            if is_permanent(exc):
                raise PermanentSourceError(f"{what}: {redact(str(exc))}") from None
            if attempt == attempts:
                raise
            delay = rng.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, redact(type(exc).__name__ + ": " + str(exc))[:200],
                        attempt, attempts - 1, delay)
            (sleep or time.sleep)(delay)
    raise AssertionError("unreachable")
