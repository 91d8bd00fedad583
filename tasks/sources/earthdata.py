"""OCO-2 and OCO-3 Lite granules from NASA Earthdata (GES DISC) through earthaccess.

`EarthdataRemote` implements the `Remote` protocol: `list()` asks CMR (`earthaccess.search_data`)
for the granules of one collection in a window and region, `fetch()` downloads one granule
(`earthaccess.download`) into a hidden temp folder beside the pull's temp path and moves the
`.nc4` onto it.

Login happens once per process, only with the non-interactive strategy that
`tasks.sources.credentials.earthdata_login()` chose ('environment' or 'netrc'), never
'interactive' or 'all', and never persisted. Only *where* the credentials came from is ever
logged or put in an error: not earthaccess's auth object, tokens, or download URLs.

HTTP failures keep their status (`status_code`), so `tasks.sources.retry` does not retry
401/403/404 but does retry 5xx and silent failures.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import warnings
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from tasks.settings import Settings
from tasks.sources.credentials import EARTHDATA_HINT, EarthdataLogin, MissingCredentials, earthdata_login, redact
from tasks.sources.products import PRODUCTS
from tasks.sources.remote import RemoteGranule, SourceError
from tasks.sources.retry import PERMANENT_STATUS, PermanentSourceError, http_status

log = logging.getLogger(__name__)

__all__ = ["EarthdataError", "EarthdataRemote", "earthdata_remote"]

SUPPORTED = ("oco2", "oco3")
_NON_INTERACTIVE = ("environment", "netrc")

_login_lock = threading.Lock()
_logged_in: EarthdataLogin | None = None  # set once per process, after a successful login


class EarthdataError(SourceError):
    """An Earthdata request failed; `status_code` is the HTTP status when one is known."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _earthaccess() -> ModuleType:
    import earthaccess  # imported lazily: demo and local modes never need it

    return earthaccess


def _is_named(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def ensure_login() -> EarthdataLogin:
    """Log in to NASA Earthdata once per process (non-interactively); returns where from.

    MissingCredentials (from `earthdata_login`) propagates unchanged; rejected credentials raise
    PermanentSourceError naming the strategy and origin, never a secret.
    """
    global _logged_in
    with _login_lock:
        if _logged_in is not None:
            return _logged_in
        creds = earthdata_login()  # MissingCredentials says exactly what to set
        if creds.strategy not in _NON_INTERACTIVE:  # never a prompt in a scheduled run
            raise PermanentSourceError(f"refusing Earthdata login strategy {creds.strategy!r} "
                                       f"(only {', '.join(_NON_INTERACTIVE)})")
        where = f"strategy {creds.strategy!r}, credentials from {creds.origin}"
        try:
            auth = _earthaccess().login(strategy=creds.strategy, persist=False)
        except Exception as exc:  # noqa: BLE001 - classified below; its text may echo a server reply
            if _is_named(exc, "LoginStrategyUnavailable"):
                raise MissingCredentials(f"earthaccess found no usable credentials ({where}): "
                                         f"{EARTHDATA_HINT}") from None
            status = http_status(exc)
            if _is_named(exc, "LoginAttemptFailure") or status in PERMANENT_STATUS:
                raise PermanentSourceError(f"NASA Earthdata Login rejected the credentials ({where}); "
                                           f"check them, or {EARTHDATA_HINT}") from None
            # Network trouble and server errors: transient, the pull's retries apply.
            raise EarthdataError(f"NASA Earthdata Login failed ({where}): {type(exc).__name__}"
                                 + (f", HTTP {status}" if status else ""), status) from None
        if auth is None or not getattr(auth, "authenticated", False):
            raise PermanentSourceError(f"NASA Earthdata Login did not authenticate ({where}); "
                                       f"check the credentials, or {EARTHDATA_HINT}")
        log.info("logged in to NASA Earthdata (%s)", where)
        _logged_in = creds
        return creds


def _reset_login() -> None:
    """Forget the process's login (tests, or after credentials were changed)."""
    global _logged_in
    with _login_lock:
        _logged_in = None


def _basename(link: str) -> str:
    return Path(urlsplit(link).path).name


def _umm(granule: Any) -> dict:
    try:
        umm = granule["umm"]
    except (KeyError, TypeError):
        return {}
    return umm if isinstance(umm, dict) else {}


def _native_id(granule: Any) -> str | None:
    try:
        meta = granule["meta"]
    except (KeyError, TypeError):
        return None
    if isinstance(meta, dict):
        return meta.get("native-id") or meta.get("concept-id")
    return None


def _size_bytes(granule: Any) -> int | None:
    try:
        with warnings.catch_warnings():  # earthaccess warns that size() becomes an attribute
            warnings.simplefilter("ignore", FutureWarning)
            megabytes = granule.size() if callable(getattr(granule, "size", None)) else granule.size
        megabytes = float(megabytes)
    except Exception:  # noqa: BLE001 - size is informative only
        return None
    return int(round(megabytes * 1024 * 1024)) if megabytes > 0 else None


def _download_error(exc: BaseException, name: str) -> Exception:
    """An earthaccess/requests download failure as an error that keeps the HTTP status but not the URL."""
    if isinstance(exc, (PermanentSourceError, EarthdataError)):
        return exc
    if _is_named(exc, "EulaNotAccepted"):
        return PermanentSourceError(f"downloading {name}: the data's EULA has not been accepted for this "
                                    "Earthdata account (accept it at urs.earthdata.nasa.gov)")
    status = http_status(exc)
    if status is not None:
        return EarthdataError(f"downloading {name}: HTTP {status} ({type(exc).__name__})", status)
    # Connection resets, timeouts...: transient; the type is enough, the text may carry a URL.
    return EarthdataError(f"downloading {name}: {type(exc).__name__}: {redact(str(exc))[:200]}")


class EarthdataRemote:
    """The OCO-2 or OCO-3 Lite collection `short_name`/`version`, searched over `bbox` (W, S, E, N)."""

    def __init__(self, short_name: str, version: str, bbox: tuple[float, float, float, float],
                 product: str) -> None:
        if product not in SUPPORTED:
            raise ValueError(f"EarthdataRemote serves {SUPPORTED}, not {product!r}")
        west, south, east, north = (float(v) for v in bbox)
        if not (west < east and south < north):
            raise ValueError(f"bbox must be (west, south, east, north), got {bbox}")
        self.short_name, self.version, self.product = short_name, version, product
        self.bbox = (west, south, east, north)

    def __repr__(self) -> str:
        return (f"EarthdataRemote({self.short_name!r}, {self.version!r}, bbox={self.bbox}, "
                f"product={self.product!r})")

    def list(self, product: str, start: date | None, end: date | None) -> list[RemoteGranule]:
        if product != self.product:
            raise ValueError(f"this remote serves {self.product!r}, not {product!r}")
        ensure_login()
        query: dict[str, Any] = {"short_name": self.short_name, "version": self.version,
                                 "bounding_box": self.bbox, "count": -1}
        if start is not None or end is not None:
            # A date-only end covers that whole day in earthaccess.
            query["temporal"] = (start.isoformat() if start else None, end.isoformat() if end else None)
        try:
            results = _earthaccess().search_data(**query)
        except Exception as exc:  # noqa: BLE001 - keep the status, drop the text's URLs
            raise _search_error(exc, self) from None
        spec = PRODUCTS[product]
        out: list[RemoteGranule] = []
        seen: set[str] = set()
        for granule in results or []:
            links = [link for link in _links(granule) if _basename(link).endswith(".nc4")]
            if not links:
                log.warning("%s: granule %s has no .nc4 data link; skipped", product, _ur(granule, None))
                continue
            name = _basename(links[0])
            if not spec.matches(name):
                log.warning("%s: %s is not an %s Lite file name; skipped", product, name, product.upper())
                continue
            day = spec.day(name)
            if day is not None and ((start and day < start) or (end and day > end)):
                log.debug("%s: %s is outside %s..%s; dropped", product, name, start, end)
                continue
            remote_id = _ur(granule, name)
            if remote_id in seen:
                continue
            seen.add(remote_id)
            out.append(RemoteGranule(product, remote_id, name, day, _size_bytes(granule), handle=granule))
        log.info("%s: %d granules in %s %s for %s..%s", product, len(out), self.short_name, self.version,
                 start, end)
        return out

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        """Download `granule` and move its .nc4 onto `dest` (which does not exist yet)."""
        ensure_login()
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Hidden, and not named after `dest`, so neither listings nor atomic_path's cleanup see it.
        workdir = Path(tempfile.mkdtemp(prefix=".earthaccess-", suffix=".tmp", dir=dest.parent))
        try:
            try:
                paths = _earthaccess().download([granule.handle], local_path=str(workdir), threads=1,
                                                show_progress=False)
            except Exception as exc:  # noqa: BLE001 - mapped to keep the status, not the URL
                raise _download_error(exc, granule.name) from None
            failures = [p for p in (paths or []) if isinstance(p, BaseException)]
            if failures:  # some pqdm settings return exceptions instead of raising them
                raise _download_error(failures[0], granule.name)
            files = [Path(p) for p in (paths or []) if p is not None]
            files = [p for p in files if p.is_file() and p.name.endswith(".nc4")]
            if not files:
                # earthaccess logs and returns [] (e.g. no session): transient, so retried.
                raise EarthdataError(f"downloading {granule.name}: earthaccess returned no file")
            chosen = [p for p in files if p.name == granule.name] or files
            if len(chosen) > 1:
                raise EarthdataError(f"downloading {granule.name}: earthaccess returned "
                                     f"{len(chosen)} .nc4 files ({', '.join(p.name for p in chosen)})")
            os.replace(chosen[0], dest)  # same folder tree: a rename, not a copy
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _links(granule: Any) -> list[str]:
    try:
        links = granule.data_links()
    except Exception:  # noqa: BLE001 - a malformed record is skipped, not fatal
        return []
    return [link for link in links or [] if isinstance(link, str)]


def _ur(granule: Any, fallback: str | None) -> str:
    return _umm(granule).get("GranuleUR") or _native_id(granule) or fallback or "?"


def _search_error(exc: BaseException, remote: EarthdataRemote) -> Exception:
    what = f"searching {remote.short_name} {remote.version}"
    status = http_status(exc)
    return EarthdataError(f"{what}: {type(exc).__name__}" + (f", HTTP {status}" if status else "")
                          + f": {redact(str(exc))[:200]}", status)


def earthdata_remote(settings: Settings, product: str) -> EarthdataRemote:
    """The remote for 'oco2' or 'oco3' as configured (collection, version, region box)."""
    if product not in SUPPORTED:
        raise ValueError(f"NASA Earthdata serves {SUPPORTED} here, not {product!r}")
    short_name = getattr(settings, f"{product}_short_name")
    version = getattr(settings, f"{product}_version")
    r = settings.region
    return EarthdataRemote(short_name, version, (r.west, r.south, r.east, r.north), product)
