"""GOSAT L2 XCO2 and ERA5 hourly single levels from the Copernicus Climate Data Store (cdsapi 0.7).

`cds_remote(settings, product)` gives a `Remote` (tasks.sources.remote) for 'gosat' or 'era5'.
The CDS has no listing: `list()` makes one candidate granule per day of the window and
`fetch()` submits one request per day (`cdsapi.Client.retrieve(dataset, request, target)`).

GOSAT (`satellite-carbon-dioxide`)
    One request per day; the answer is a zip or tar.gz archive (told apart by content, not by
    name). The daily NetCDF for that day (found by its real name pattern) is written to `dest`
    under the name `list()` built from the day, algorithm and version
    (`YYYYMMDD-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc`).

ERA5 (`reanalysis-era5-single-levels`)
    One request per day d <= today - latency_days (5): the 8 variables, 00..23 UTC, the region
    box plus a 0.5 degree margin rounded outwards to 0.25 degrees, netcdf/unarchived. The answer
    is stored as it comes (often a ZIP of instant + accum NetCDFs despite 'unarchived'; the
    reader handles it) as `era5_single_levels_YYYYMMDD.nc`.
    ERA5T -> final: the remote id ends in ':final' for days more than `final_after_days` (90)
    old, else ':era5t'. When a day ages past that threshold its id changes, so the pull fetches
    it again and replaces the file. A ':final' fetch that still returns ERA5T (expver 0005) is
    `GranuleUnavailable`: the ERA5T file stays and final data is asked for again later.

'No data' (GranuleUnavailable, not a failure; the pull records the day as 'unavailable'):
    - GOSAT: an archive (zip/tar, possibly empty) that holds no daily file for the requested day;
    - a CDS error whose text says there is no data: 'MultiAdaptorNoDataError', 'no data',
      'There is no data matching your request', 'None of the data you have requested is
      available yet', 'latest date available', 'is not yet available';
    - GOSAT only: the new CDS's constraint refusal 'Request has not produced a valid combination
      of values', which is what a day outside the climate-data record gets. (A misspelt
      gosat_algorithm/gosat_version gets the same answer for every day; the message says so.)
    - ERA5: a file with fewer than the 24 hourly steps of the day (not complete yet), or ERA5T
      data for a ':final' request.
    Any of these with HTTP 401/403 or 5xx is not 'no data'.

Failures keep their HTTP status (`status_code`) so tasks.sources.retry does not retry 400/401/
403/404 and licence refusals (PermanentSourceError, with a message telling the user to accept the
dataset licence on the CDS portal), and does retry 429/5xx, connection errors and truncated
downloads. cdsapi's own retries are cut down (retry_max, sleep_max) so the pull's backoff rules.

Credentials come from tasks.sources.credentials.cds_credentials() when first needed
(MissingCredentials propagates unchanged, naming CDSAPI_URL/CDSAPI_KEY and ~/.cdsapirc). The key
goes to cdsapi.Client only: it is not kept on the remote, and cdsapi's log messages (its
start-up debug line prints the key) are routed through callbacks that drop debug chatter and
redact the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import cdsapi

from tasks.readers.era5_layout import EXPVER_FINAL, EXPVER_PRELIMINARY
from tasks.settings import Region, Settings
from tasks.sources.credentials import CDS_HINT, cds_credentials, redact
from tasks.sources.products import PRODUCTS
from tasks.sources.remote import GranuleUnavailable, RemoteGranule, SourceError
from tasks.sources.retry import PERMANENT_STATUS, PermanentSourceError, http_status

if TYPE_CHECKING:  # xarray loads with the ERA5 reader, only when a file is read
    import xarray as xr

log = logging.getLogger(__name__)

__all__ = [
    "CdsError", "CdsPermanentError", "CdsRemote", "Era5Remote", "GosatRemote",
    "LicenceNotAccepted", "cds_remote", "era5_area", "era5_expvers", "gosat_file_name",
    "is_preliminary",
]

GOSAT_DATASET = "satellite-carbon-dioxide"
ERA5_DATASET = "reanalysis-era5-single-levels"
PORTAL = "https://cds.climate.copernicus.eu"

# Request name -> NetCDF name (docs/formats.md); the reader maps the NetCDF names.
ERA5_REQUEST_VARIABLES = (
    "evaporation", "total_precipitation", "surface_pressure", "2m_temperature",
    "2m_dewpoint_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind",
    "sunshine_duration",
)
ERA5_TIMES = tuple(f"{h:02d}:00" for h in range(24))
ERA5_LATENCY_DAYS = 5  # ERA5T appears about 5 days behind real time
ERA5_FINAL_AFTER_DAYS = 90  # final ERA5 replaces ERA5T 2-3 months later
AREA_MARGIN_DEG = 0.5
AREA_STEP_DEG = 0.25  # the ERA5 grid
# The archive-format key of the GOSAT request: 'format' in old-CDS scripts, 'data_format' in
# new-CDS ones (unverified, docs/formats.md). Either way the answer is detected by its content.
GOSAT_ARCHIVE_FORMAT: tuple[str, str] | None = ("data_format", "zip")

# cdsapi retries failed HTTP calls itself up to 500 times, 120 s apart: far too long inside a
# daily flow whose own retries (tasks.sources.retry) back off and report. The settings
# cds_client_retries / cds_client_sleep_s override these defaults (see `cds_remote`).
CLIENT_RETRY_MAX = 3
CLIENT_SLEEP_MAX = 30.0

_NO_DATA = re.compile(
    r"no ?data(?:\b|error)|no matching data|requested is (?:not )?available yet|"
    r"is not yet available|latest date available|nothing to retrieve", re.IGNORECASE)
_OUT_OF_CONSTRAINTS = re.compile(r"valid combination of values", re.IGNORECASE)
_LICENCE = re.compile(r"licen[cs]e|accept the terms|terms of use|required terms", re.IGNORECASE)
_MAX_MESSAGE = 600


# --------------------------------------------------------------------------------------------
# Errors


class CdsError(SourceError):
    """A transient CDS failure (5xx, 429, connection, truncated download): worth retrying."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class CdsPermanentError(PermanentSourceError):
    """The CDS refused the request and will refuse it again (400/401/403/404)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LicenceNotAccepted(CdsPermanentError):
    """The account behind the key has not accepted the dataset's licence on the CDS portal."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " ..."


def classify_error(exc: BaseException, dataset: str, day: date | None, origin: str = "") -> BaseException:
    """The exception the pull should see for a cdsapi failure (see the module docstring)."""
    if isinstance(exc, (GranuleUnavailable, PermanentSourceError, CdsError)):
        return exc
    text = _short(redact(f"{type(exc).__name__}: {exc}"))
    status = http_status(exc)
    when = f" for {day.isoformat()}" if day else ""
    if status not in (401, 403) and (status is None or status < 500):
        constraint = dataset == GOSAT_DATASET and _OUT_OF_CONSTRAINTS.search(text)
        if _NO_DATA.search(text) or constraint:
            hint = (" (if the CDS says this for every day, check gosat_algorithm and "
                    "gosat_version against the dataset's form)") if constraint else ""
            return GranuleUnavailable(f"{dataset} has no data{when} yet: {text}{hint}")
    if status in (403, None, 400) and _LICENCE.search(text):
        return LicenceNotAccepted(
            f"{dataset}: the CDS licence of this dataset has not been accepted by the account of "
            f"the key from {origin or 'the CDS credentials'}. Log in to the CDS portal and accept "
            f"it once at {PORTAL}/datasets/{dataset}?tab=download#manage-licences "
            f"(CDS said: {text})", status_code=status or 403)
    if status == 401:
        return CdsPermanentError(
            f"{dataset}: the CDS rejected the credentials from {origin or 'the environment'} "
            f"(401). Check the key ({CDS_HINT}); the current CDS needs the personal access token "
            f"from your profile page at {PORTAL}. CDS said: {text}", status_code=401)
    if status in PERMANENT_STATUS:
        return CdsPermanentError(f"{dataset}: the CDS refused the request{when} ({status}): {text}",
                                 status_code=status)
    return CdsError(f"{dataset}: request{when} failed: {text}", status_code=status)


# --------------------------------------------------------------------------------------------
# Names, requests and ERA5 helpers


def gosat_file_name(day: date, algorithm: str, version: str) -> str:
    """The real daily C3S name, e.g. 20200601-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc
    for ('tanso_fts_ocfp', '7_3')."""
    tag = algorithm.rsplit("_", 1)[-1].upper()
    dotted = version.replace("_", ".").lstrip("vV")
    name = f"{day:%Y%m%d}-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-{tag}-DAILY-v{dotted}.nc"
    assert PRODUCTS["gosat"].matches(name), name
    return name


def era5_area(region: Region, margin: float = AREA_MARGIN_DEG, step: float = AREA_STEP_DEG) -> list[float]:
    """[N, W, S, E]: the region box plus `margin` degrees, rounded outwards to `step`."""

    def outwards(value: float, up: bool) -> float:
        q = round(value / step, 6)  # 34.82/0.25 must not become 139.28000000000003 -> ceil 140
        return (math.ceil(q) if up else math.floor(q)) * step

    return [min(90.0, outwards(region.north + margin, True)),
            max(-180.0, outwards(region.west - margin, False)),
            max(-90.0, outwards(region.south - margin, False)),
            min(180.0, outwards(region.east + margin, True))]


def _day_lists(day: date) -> dict[str, list[str]]:
    return {"year": [f"{day.year:04d}"], "month": [f"{day.month:02d}"], "day": [f"{day.day:02d}"]}


def era5_expvers(path: Path | str) -> set[str]:
    """The expver values of an ERA5 file ('0001' final, '0005' ERA5T); empty when the file does
    not say (old-CDS files of a single stream carry no expver)."""
    from tasks.readers import read_era5

    return _expvers(read_era5(path))


def is_preliminary(path: Path | str) -> bool:
    """True when any step of the file is ERA5T (expver 0005)."""
    return EXPVER_PRELIMINARY in era5_expvers(path)


def _expvers(hourly: xr.Dataset) -> set[str]:
    if "expver" not in hourly.coords and "expver" not in hourly.data_vars:
        return set()
    return {str(v) for v in hourly["expver"].values.ravel()}


# --------------------------------------------------------------------------------------------
# Remotes


class CdsRemote(ABC):
    """What GOSAT and ERA5 share: the lazily created client, the day window, error mapping."""

    dataset = ""
    product = ""

    def __init__(self, settings: Settings, today: date | None = None,
                 retry_max: int = CLIENT_RETRY_MAX, sleep_max: float = CLIENT_SLEEP_MAX) -> None:
        self.settings = settings
        self.today = today
        self.retry_max = retry_max
        self.sleep_max = sleep_max
        self._client: Any = None
        self._origin = ""
        self._lock = threading.Lock()

    # -- the client --------------------------------------------------------------------------

    def client(self) -> Any:
        """cdsapi.Client, created on first use; MissingCredentials propagates unchanged."""
        with self._lock:
            if self._client is None:
                creds = cds_credentials()
                self._origin = creds.origin
                try:
                    self._client = cdsapi.Client(
                        url=creds.url, key=creds.key, quiet=True, progress=False,
                        retry_max=self.retry_max, sleep_max=self.sleep_max,
                        # Bounded connect and read: an unanswering CDS costs seconds, not minutes.
                        timeout=(self.settings.source_connect_timeout_s, self.settings.source_read_timeout_s),
                        info_callback=_cds_log(logging.DEBUG),
                        warning_callback=_cds_log(logging.WARNING),
                        error_callback=_cds_log(logging.WARNING),
                        debug_callback=_drop,  # cdsapi's start-up debug line holds the key
                    )
                except Exception as exc:  # noqa: BLE001 - a malformed key or URL
                    raise CdsPermanentError(
                        f"cannot set up the CDS client with the credentials from {creds.origin}: "
                        f"{_short(redact(f'{type(exc).__name__}: {exc}'))} ({CDS_HINT})") from None
                log.debug("CDS client for %s (credentials from %s)", creds.url, creds.origin)
            return self._client

    def _retrieve(self, request: dict[str, Any], target: Path, day: date | None) -> None:
        client = self.client()
        log.info("CDS %s: requesting %s", self.dataset, day.isoformat() if day else "?")
        try:
            client.retrieve(self.dataset, request, str(target))
        except Exception as exc:  # noqa: BLE001 - classified for the pull's retry rules
            raise classify_error(exc, self.dataset, day, self._origin) from None
        if not target.is_file() or target.stat().st_size == 0:
            raise CdsError(f"{self.dataset}: the download for {day} left no data (interrupted?)")

    # -- the window --------------------------------------------------------------------------

    def _today(self) -> date:
        return self.today or datetime.now(timezone.utc).date()

    def _last_day(self, today: date) -> date:
        return today

    def _days(self, start: date | None, end: date | None) -> Iterator[date]:
        today = self._today()
        last = self._last_day(today)
        end = min(end, last) if end else last
        if start is None:  # the CDS cannot be listed: fall back to the daily run's lookback
            start = end - timedelta(days=self.settings.ingest_lookback_days - 1)
        day = start
        while day <= end:
            yield day
            day += timedelta(days=1)

    def _check_product(self, product: str) -> None:
        if product != self.product:
            raise ValueError(f"{type(self).__name__} serves {self.product!r}, not {product!r}")

    def list(self, product: str, start: date | None, end: date | None) -> list[RemoteGranule]:
        self._check_product(product)
        cds_credentials()  # no credentials: say so once per product, not once per day
        return [self._granule(day) for day in self._days(start, end)]

    @abstractmethod
    def _granule(self, day: date) -> RemoteGranule:
        """The candidate granule of one day (subclasses know the dataset's ids and names)."""

    @abstractmethod
    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        """Write the whole granule to `dest` (a temp path that does not exist yet)."""

    def _scratch(self, dest: Path) -> tempfile.TemporaryDirectory:
        # Hidden, beside dest (same filesystem: the final move is a rename), gone afterwards.
        return tempfile.TemporaryDirectory(prefix=".cds-", dir=dest.parent)


class GosatRemote(CdsRemote):
    """Daily C3S GOSAT L2 XCO2 files from `satellite-carbon-dioxide`."""

    dataset = GOSAT_DATASET
    product = "gosat"

    def __init__(self, settings: Settings, today: date | None = None,
                 archive_format: tuple[str, str] | None = GOSAT_ARCHIVE_FORMAT, **kwargs: Any) -> None:
        super().__init__(settings, today, **kwargs)
        self.algorithm = settings.gosat_algorithm
        self.version = settings.gosat_version
        self.archive_format = archive_format

    def request(self, day: date) -> dict[str, Any]:
        request: dict[str, Any] = {
            "processing_level": ["level_2"],
            "variable": "xco2",
            "sensor_and_algorithm": self.algorithm,
            **_day_lists(day),
            "version": self.version,
        }
        if self.archive_format:
            key, value = self.archive_format
            request[key] = value
        return request

    def _granule(self, day: date) -> RemoteGranule:
        return RemoteGranule(
            self.product, f"{self.dataset}:{self.algorithm}:{self.version}:{day.isoformat()}",
            gosat_file_name(day, self.algorithm, self.version), day)

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        day = granule.day
        assert day is not None
        with self._scratch(dest) as scratch:
            answer = Path(scratch) / "answer"
            self._retrieve(self.request(day), answer, day)
            self._unpack(answer, day, dest)

    def _unpack(self, answer: Path, day: date, dest: Path) -> None:
        head = _head(answer)
        if head.startswith(b"\x89HDF") or head[:3] == b"CDF":  # a bare NetCDF, not archived
            os.replace(answer, dest)
            return
        if zipfile.is_zipfile(answer):
            try:
                with zipfile.ZipFile(answer) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
                    member = self._pick(names, day)
                    with zf.open(member) as src, open(dest, "xb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
                raise CdsError(f"{self.dataset}: the zip for {day} is damaged ({exc})") from None
            return
        if tarfile.is_tarfile(answer):
            try:
                with tarfile.open(answer, "r:*") as tf:
                    files = {m.name: m for m in tf.getmembers() if m.isfile()}
                    member = self._pick(list(files), day)
                    extracted = tf.extractfile(files[member])
                    assert extracted is not None  # None only for a member that is not a file
                    with extracted, open(dest, "xb") as out:
                        shutil.copyfileobj(extracted, out, 1 << 20)
            except (tarfile.TarError, EOFError) as exc:
                raise CdsError(f"{self.dataset}: the tar archive for {day} is damaged ({exc})") from None
            return
        # An HTML error page or a cut-off download: worth another try.
        raise CdsError(f"{self.dataset}: the answer for {day} is neither a zip, a tar archive nor "
                       f"NetCDF (starts with {head[:8]!r})")

    def _pick(self, names: list[str], day: date) -> str:
        spec = PRODUCTS["gosat"]
        for_day = sorted(n for n in names if spec.matches(Path(n).name) and spec.day(Path(n).name) == day)
        if not for_day:
            shown = ", ".join(Path(n).name for n in names[:4]) or "nothing"
            raise GranuleUnavailable(
                f"{self.dataset} ({self.algorithm} {self.version}) has no daily file for "
                f"{day.isoformat()}: the archive holds {len(names)} file(s) ({shown})")
        tag = f"-{self.algorithm.rsplit('_', 1)[-1].upper()}-"
        preferred = [n for n in for_day if tag in Path(n).name]
        return (preferred or for_day)[0]


class Era5Remote(CdsRemote):
    """Hourly ERA5 single levels, one file per UTC day, from `reanalysis-era5-single-levels`."""

    dataset = ERA5_DATASET
    product = "era5"

    def __init__(self, settings: Settings, today: date | None = None,
                 latency_days: int = ERA5_LATENCY_DAYS, final_after_days: int = ERA5_FINAL_AFTER_DAYS,
                 **kwargs: Any) -> None:
        super().__init__(settings, today, **kwargs)
        self.latency_days = latency_days
        self.final_after_days = final_after_days
        self.area = era5_area(settings.region)

    def request(self, day: date) -> dict[str, Any]:
        return {
            "product_type": ["reanalysis"],
            "variable": list(ERA5_REQUEST_VARIABLES),
            **_day_lists(day),
            "time": list(ERA5_TIMES),
            "area": list(self.area),
            "data_format": "netcdf",
            "download_format": "unarchived",
        }

    def _last_day(self, today: date) -> date:
        return today - timedelta(days=self.latency_days)

    def expects_final(self, day: date) -> bool:
        return (self._today() - day).days > self.final_after_days

    def _granule(self, day: date) -> RemoteGranule:
        stream = "final" if self.expects_final(day) else "era5t"
        return RemoteGranule(self.product, f"{self.dataset}:{day.isoformat()}:{stream}",
                             f"era5_single_levels_{day:%Y%m%d}.nc", day)

    def fetch(self, granule: RemoteGranule, dest: Path) -> None:
        day = granule.day
        assert day is not None
        with self._scratch(dest) as scratch:
            answer = Path(scratch) / granule.name
            self._retrieve(self.request(day), answer, day)
            self._check(answer, day, final=granule.remote_id.endswith(":final"))
            os.replace(answer, dest)  # as it came: ZIP or NetCDF, new or old layout

    def _check(self, path: Path, day: date, final: bool) -> None:
        from tasks.io.quarantine import InputFileError
        from tasks.readers import read_era5

        try:
            hourly = read_era5(path)
        except InputFileError:
            return  # unreadable: the pull's own check quarantines it
        times = hourly.indexes["time"]
        steps = int(((times >= datetime(day.year, day.month, day.day))
                     & (times < datetime(day.year, day.month, day.day) + timedelta(days=1))).sum())
        if steps < len(ERA5_TIMES):
            raise GranuleUnavailable(f"{self.dataset}: {day.isoformat()} has {steps} of the 24 "
                                     "hourly steps so far")
        if final and EXPVER_PRELIMINARY in _expvers(hourly):
            raise GranuleUnavailable(
                f"{self.dataset}: the CDS still serves ERA5T (expver {EXPVER_PRELIMINARY}) for "
                f"{day.isoformat()}; final ERA5 (expver {EXPVER_FINAL}) is asked for again later")


def cds_remote(settings: Settings, product: str, today: date | None = None, **options: Any) -> CdsRemote:
    """The Remote for 'gosat' or 'era5'. ERA5's latency and final-data threshold come from
    `options`, else from settings fields `era5_latency_days` / `era5_final_after_days` when those
    exist, else 5 and 90 days."""
    options.setdefault("retry_max", settings.cds_client_retries)
    options.setdefault("sleep_max", settings.cds_client_sleep_s)
    if product == "gosat":
        return GosatRemote(settings, today, **options)
    if product == "era5":
        options.setdefault("latency_days", settings.era5_latency_days)
        options.setdefault("final_after_days", settings.era5_final_after_days)
        return Era5Remote(settings, today, **options)
    raise ValueError(f"the Copernicus CDS serves 'gosat' and 'era5', not {product!r}")


# --------------------------------------------------------------------------------------------
# Small helpers


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _drop(*args: Any, **kwargs: Any) -> None:
    """cdsapi debug messages: dropped (one of them is the client's settings, key included)."""


def _cds_log(level: int) -> Callable[..., None]:
    def emit(*args: Any, **kwargs: Any) -> None:
        if not args:
            return
        try:
            message = str(args[0]) % args[1:] if len(args) > 1 else str(args[0])
        except (TypeError, ValueError):
            message = " ".join(str(a) for a in args)
        log.log(level, "cdsapi: %s", _short(redact(message)))

    return emit
