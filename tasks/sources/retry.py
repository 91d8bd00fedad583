"""Retries for the real archives: back off with jitter on transient failures, never on 401/403/404.

A run also gives up on a service that cannot be reached at all: `CircuitBreaker` counts the
connection failures (refused, name not resolved, timed out) of one service (NASA Earthdata, the
Copernicus CDS) and, after a few, answers every further request of the run at once with
`ServiceUnreachable` instead of asking again. Each run makes new breakers, so the next run tries
again. `bounded_requests` puts a connect/read timeout on every HTTP request made through
`requests` without one (earthaccess and python-cmr set none), so a silent network cannot hang a
request either.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from tasks.io.atomic import STORAGE_ERRNOS, PublishError
from tasks.sources.credentials import MissingCredentials, redact

log = logging.getLogger(__name__)
T = TypeVar("T")

PERMANENT_STATUS = {400, 401, 403, 404}
# When an exception keeps no status attribute, its text may: requests' HTTPError says "404 Client
# Error: ...", earthaccess "... status code: 503", other clients only the bare code. The specific
# forms first, so a number elsewhere in the text cannot win; a bare code counts only if permanent.
_STATUS_IN_TEXT = (
    re.compile(r"\b([1-5]\d\d) (?:Client|Server) Error", re.IGNORECASE),
    re.compile(r"status code:?\s*([1-5]\d\d)\b", re.IGNORECASE),
    re.compile(r"\b(40[0134])\b"),
)


class PermanentSourceError(RuntimeError):
    """A request the archive will refuse again (bad credentials, licence not accepted, no such data)."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception from requests, earthaccess or cdsapi, when one is known:
    its `status_code`/`status`, its response's `status_code`, else the status its message names
    (the one parser of every source: tasks.sources.cds and tasks.sources.earthdata use it)."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    for pattern in _STATUS_IN_TEXT:
        if m := pattern.search(text):
            return int(m.group(1))
    return None


def is_storage_failure(exc: BaseException) -> bool:
    """The local disk failed the write (full, over quota, read-only, I/O error), not the archive."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def is_permanent(exc: BaseException) -> bool:
    # Missing credentials will be just as missing in two minutes; an open breaker stays open
    # for the rest of the run. A storage error is retried (space may be freed meanwhile), and its
    # message, with paths and byte counts, must not be read for an HTTP status ("1,404,112 bytes").
    if is_storage_failure(exc):
        return False
    return (isinstance(exc, (PermanentSourceError, MissingCredentials, ServiceUnreachable))
            or http_status(exc) in PERMANENT_STATUS)


class ServiceUnreachable(RuntimeError):
    """A service failed to answer at all too often this run: it is not asked again until the next run."""


# "The server was never reached or never answered": refused, name not resolved, unreachable,
# timed out. Class names anywhere in the class hierarchy, since requests, urllib3, httpx and the
# standard library each have their own. A connection reset or cut-off transfer is not one of
# them (the server answered): the retries handle those, the breaker does not count them.
_NO_ANSWER_CLASSES = frozenset({
    "ConnectionRefusedError", "TimeoutError", "Timeout", "ConnectTimeout", "ConnectTimeoutError",
    "ReadTimeout", "ReadTimeoutError", "NewConnectionError", "NameResolutionError", "ConnectError",
    "TimeoutException", "gaierror", "herror",
})
_NO_ANSWER_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                               errno.ETIMEDOUT, errno.EHOSTDOWN})
# The remotes re-raise as their own error types; their text keeps the original's name and words.
_NO_ANSWER_TEXT = re.compile(
    r"connection refused|failed to establish a new connection|name or service not known|temporary failure "
    r"in name resolution|nodename nor servname|name resolution|timed out|network is unreachable|no route to "
    r"host|NewConnectionError|NameResolutionError|ConnectTimeout|ReadTimeout", re.IGNORECASE)


def is_connection_failure(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from, while handling or with (urllib3's
    `reason`, requests' first argument), says the server was never reached or never answered."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if getattr(e, "response", None) is not None and http_status(e) is not None:
            return False  # the server answered, with an error status
        if {cls.__name__ for cls in type(e).__mro__} & _NO_ANSWER_CLASSES:
            return True
        if isinstance(e, OSError) and e.errno in _NO_ANSWER_ERRNOS:
            return True
        if _NO_ANSWER_TEXT.search(str(e)):
            return True
        todo.extend((e.__cause__, e.__context__, getattr(e, "reason", None), *e.args[:1]))
    return False


class CircuitBreaker:
    """Counts the connection failures of one service during one run; opens after `threshold`.

    `call(fn)` runs `fn` while the breaker is closed and raises ServiceUnreachable without
    running it once open. An answer from the server, even an error, resets the count: only
    consecutive failures to get any answer open it. Thread-safe (the pull may fetch in parallel).
    """

    def __init__(self, service: str, threshold: int = 3) -> None:
        if threshold < 1:
            raise ValueError(f"circuit breaker threshold must be >= 1, got {threshold}")
        self.service = service
        self.threshold = threshold
        self.failures = 0
        self.reason: str | None = None  # the last connection failure, once open
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.reason is not None

    def call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self.reason is not None:
                raise ServiceUnreachable(self._message())
        try:
            result = fn()
        except Exception as exc:
            opened = False
            if is_connection_failure(exc):
                with self._lock:
                    self.failures += 1
                    if self.failures >= self.threshold and self.reason is None:
                        self.reason = redact(f"{type(exc).__name__}: {exc}")[:600]
                        opened = True
                        log.error("%s: %d connection failures in a row; not asked again this run (%s)",
                                  self.service, self.failures, self.reason)
            elif http_status(exc) is not None:
                with self._lock:
                    self.failures = 0
            if opened:  # permanent for the retries too: no back-off wait before giving up
                raise ServiceUnreachable(self._message()) from exc
            raise
        with self._lock:
            self.failures = 0
        return result

    def _message(self) -> str:
        return (f"{self.service} unreachable: {self.failures} connection failures this run, not asked "
                f"again until the next run (last: {self.reason})")


_timeout_lock = threading.Lock()
_timeout_users = 0
_timeout_value: tuple[float, float] | None = None
_original_request: Callable | None = None


@contextmanager
def bounded_requests(connect_s: float, read_s: float) -> Iterator[None]:
    """Within the block, an HTTP request made through `requests` without a timeout gets
    (connect_s, read_s). Requests that set their own timeout keep it. Re-entrant; the process's
    `requests` is restored when the last user leaves."""
    global _timeout_users, _timeout_value, _original_request
    import requests
    import requests.sessions

    with _timeout_lock:
        if _timeout_users == 0:
            _original_request = requests.sessions.Session.request
            original = _original_request

            def request(self: requests.Session, method: str, url: str | bytes, *args: Any,
                        **kwargs: Any) -> requests.Response:
                # timeout is Session.request's 7th parameter after url (params, data, headers,
                # cookies, files, auth, timeout): given positionally only when args has 7 or more.
                if kwargs.get("timeout") is None and len(args) < 7 and _timeout_value is not None:
                    kwargs["timeout"] = _timeout_value
                return original(self, method, url, *args, **kwargs)

            # setattr: a method replaced on the class is this function's purpose, which mypy's
            # method-assign check forbids for a plain assignment.
            setattr(requests.sessions.Session, "request", request)
        _timeout_users += 1
        # The shortest asked for wins while two runs overlap in one process.
        wanted = (float(connect_s), float(read_s))
        _timeout_value = wanted if _timeout_value is None else min(_timeout_value, wanted)
    try:
        yield
    finally:
        with _timeout_lock:
            _timeout_users -= 1
            if _timeout_users == 0:
                setattr(requests.sessions.Session, "request", _original_request)
                _original_request = None
                _timeout_value = None


def with_retries(call: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 2.0,
                 max_delay: float = 120.0, sleep: Callable[[float], None] | None = None,
                 rng: random.Random | None = None,
                 passthrough: tuple[type[BaseException], ...] = ()) -> T:
    """Run `call`; on a transient failure wait base*2^k (full jitter) and try again.

    Exceptions in `passthrough` are answers, not failures (e.g. 'no such granule yet'): re-raised at once.
    Each attempt calls `call` afresh: a call that writes a file must make its temp file inside
    (a new `atomic_path` per attempt), or an attempt finds the last one's leftovers. When the
    attempts are used up, the last error is raised; a storage error (a PublishError: disk full,
    with the path and the free space) then also says how many attempts it took.
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
                if isinstance(exc, PublishError) and attempts > 1:
                    raise type(exc)(exc.path, f"{exc.problem}; gave up after {attempts} attempts",
                                    exc.errno) from exc
                raise
            delay = rng.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, redact(type(exc).__name__ + ": " + str(exc))[:200],
                        attempt, attempts - 1, delay)
            (sleep or time.sleep)(delay)
    raise AssertionError("unreachable")
