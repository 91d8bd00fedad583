"""The thin calls to the real archives (earthaccess, cdsapi), injectable for tests.

`Clients(earthaccess=..., cdsapi=...)`: objects with the modules' interfaces, i.e.
`earthaccess.login(strategy=, persist=)`, `earthaccess.search_data(**query)`,
`earthaccess.download(granules, local_path=)` and `cdsapi.Client(url=, key=, ...).retrieve(name,
request, target)`. Left as None, the real modules are imported on first use (so a missing or
broken package fails only the layers that need it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from tasks.settings import Settings
from tasks.sources.credentials import EARTHDATA_HINT, MissingCredentials, cds_credentials, earthdata_login
from tasks.sources.retry import PermanentSourceError, with_retries
from tasks.sources.static_layers.common import static_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

_NON_INTERACTIVE = ("environment", "netrc")
SLEEP: Callable[[float], None] = time.sleep  # tests replace it to make retries instant


@dataclass
class Clients:
    earthaccess: Any = None
    cdsapi: Any = None


def as_clients(clients: Any) -> Clients:
    if clients is None:
        return Clients()
    if isinstance(clients, Clients):
        return clients
    if isinstance(clients, dict):
        return Clients(**clients)
    raise TypeError(f"clients must be a Clients or a dict, not {type(clients).__name__}")


def retrying(call: Callable[[], T], what: str) -> T:
    return with_retries(call, what, sleep=lambda s: SLEEP(s))


class Archives:
    """Logged-in access to the archives for one build (login once, lazily)."""

    def __init__(self, settings: Settings, clients: Any = None) -> None:
        self.settings = settings
        self.clients = as_clients(clients)
        self._earthaccess_ready = False

    def earthaccess(self) -> Any:  # the earthaccess module, or the stand-in `clients` gave
        ea = self.clients.earthaccess
        if ea is None:
            import earthaccess as ea  # noqa: PLC0415 - only when a layer needs it

            self.clients.earthaccess = ea
        if not self._earthaccess_ready:
            _login(ea)
            self._earthaccess_ready = True
        return ea

    def cds_client(self) -> Any:  # a cdsapi.Client, or the stand-in's
        module = self.clients.cdsapi
        if module is None:
            import cdsapi  # noqa: PLC0415

            module = self.clients.cdsapi = cdsapi
        creds = cds_credentials()  # MissingCredentials says what to set
        # cdsapi retries a failing request 500 times, 120 s apart, by default: a dead link would
        # hang the build for hours. A few tries here; `retrying` adds its own around the request.
        return module.Client(url=creds.url, key=creds.key, quiet=True, progress=False,
                             retry_max=5, sleep_max=60)


def _login(ea: Any) -> None:
    creds = earthdata_login()  # MissingCredentials says exactly what to set
    if creds.strategy not in _NON_INTERACTIVE:
        raise PermanentSourceError(f"refusing Earthdata login strategy {creds.strategy!r}")
    where = f"credentials from {creds.origin}"
    try:
        auth = ea.login(strategy=creds.strategy, persist=False)
    except Exception as exc:  # noqa: BLE001 - its text may echo a server reply: keep the type only
        if any(c.__name__ == "LoginStrategyUnavailable" for c in type(exc).__mro__):
            raise MissingCredentials(f"earthaccess found no usable credentials ({where}): {EARTHDATA_HINT}") from None
        raise PermanentSourceError(f"NASA Earthdata login failed ({where}): {type(exc).__name__}") from None
    if auth is None or not getattr(auth, "authenticated", False):
        raise PermanentSourceError(f"NASA Earthdata login did not authenticate ({where}); {EARTHDATA_HINT}")


def link_names(granule: Any) -> list[str]:
    """File names of a granule's data links (earthaccess DataGranule.data_links())."""
    try:
        links = granule.data_links()
    except Exception:  # noqa: BLE001 - a malformed record has no names
        return []
    return [Path(urlsplit(link).path).name for link in links or [] if isinstance(link, str)]


def search(ea: Any, what: str, **query: Any) -> list:
    return list(retrying(lambda: ea.search_data(count=-1, **query), f"searching {what}") or [])


class IncompleteDownload(RuntimeError):
    """Some files did not arrive; transient (earthaccess skips those already there on a retry)."""


def download(ea: Any, granules: list, folder: Path, what: str) -> list[Path]:
    """Download `granules` into `folder`; every one must arrive (a partial mosaic is worse than none)."""
    def attempt() -> list[Path]:
        files = ea.download(granules, local_path=str(folder))
        paths = [Path(f) for f in files or [] if f]
        arrived = [p for p in paths if p.is_file()]
        if len(arrived) < len(granules):
            raise IncompleteDownload(f"{what}: {len(granules) - len(arrived)} of {len(granules)} "
                                     "files did not download")
        return arrived

    return retrying(attempt, f"downloading {what}")


@contextmanager
def download_dir(settings: Settings, layer: str) -> Iterator[Path]:
    """A hidden temp folder beside the layers (same filesystem), removed afterwards."""
    folder = static_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{layer}-", suffix=".tmp", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
