"""Pulling new granules into the raw cache, whatever the source mode.

Each granule is fetched into a hidden sibling temp file (with retries where the archive allows),
checked to read, then renamed into `<data>/raw/<product>/`; an unreadable one is quarantined
and fetched again next run. A product that fails altogether (no credentials, archive down) is
reported and the other products go on. Each service (NASA Earthdata, the Copernicus CDS) has a
circuit breaker for the pull: after `source_breaker_failures` connection failures in a row it is
not asked again this run, and every request has a bounded connect/read timeout.
`every_source_failed` tells a pull that got nothing from any product (the daily run then ends
Failed with EverySourceFailed).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from tasks.io.atomic import atomic_path
from tasks.io.quarantine import InputFileError, quarantine
from tasks.settings import Settings, SourceMode
from tasks.sources.credentials import redact
from tasks.sources.manifest import Manifest
from tasks.sources.products import PRODUCTS
from tasks.sources.remote import DirectoryRemote, GranuleUnavailable, Remote, RemoteGranule, SourceError
from tasks.sources.retry import (
    CircuitBreaker,
    PermanentSourceError,
    bounded_requests,
    is_storage_failure,
    with_retries,
)

log = logging.getLogger(__name__)

__all__ = ["EverySourceFailed", "PullReport", "SourceError", "every_source_failed", "products_for", "pull",
           "raw_granules", "remote_for", "service_of"]

# Which service answers for a product in earthdata mode: one breaker per service, since OCO-2 and
# OCO-3 share NASA's servers and GOSAT and ERA5 share the CDS.
EARTHDATA_SERVICE = "NASA Earthdata"
CDS_SERVICE = "Copernicus CDS"
_SERVICES = {"oco2": EARTHDATA_SERVICE, "oco3": EARTHDATA_SERVICE, "gosat": CDS_SERVICE, "era5": CDS_SERVICE}


def service_of(settings: Settings, product: str) -> str:
    """The service a product's breaker belongs to (a directory remote: the product itself)."""
    if settings.source == SourceMode.earthdata:
        return _SERVICES.get(product, product)
    return product


class EverySourceFailed(SourceError):
    """No product could be pulled at all this run; the message names each product and why."""


@dataclass
class PullReport:
    fetched: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)  # the archive has no such granule yet
    replaced: dict[str, list[str]] = field(default_factory=dict)  # fetched over an older copy (ERA5T -> final)
    quarantined: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # product -> why it could not be pulled
    unreachable: dict[str, str] = field(default_factory=dict)  # service -> why its breaker opened
    products: list[str] = field(default_factory=list)  # the products this pull asked for

    @property
    def n_fetched(self) -> int:
        return sum(len(v) for v in self.fetched.values())


class _Quarantined(Exception):
    def __init__(self, problem: str, moved: Path) -> None:
        self.problem, self.moved = problem, moved


def remote_for(settings: Settings, product: str) -> Remote:
    if settings.source == SourceMode.demo:
        return DirectoryRemote(settings.data_dir / "demo" / "remote")
    if settings.source == SourceMode.local:
        assert settings.local_dir is not None
        if not settings.local_dir.is_dir():
            # Not retried: a directory that is not there now will not be there in a minute.
            raise PermanentSourceError(f"local_dir (XCO2_LOCAL_DIR): {settings.local_dir} "
                                       f"{'is not a directory' if settings.local_dir.exists() else 'does not exist'}")
        return DirectoryRemote(settings.local_dir)
    from tasks.sources.real import real_remote

    return real_remote(settings, product)


def products_for(settings: Settings) -> tuple[str, ...]:
    """Static layers come with the granules in demo and local mode; for the real archives they are
    built once by `xco2 covariates build` (or imported), not pulled daily."""
    if settings.source == SourceMode.earthdata:
        return tuple(p for p in PRODUCTS if p != "static")
    return tuple(PRODUCTS)


def _check_readable(product: str, path: Path) -> None:
    if product == "static":
        import rasterio

        try:
            with rasterio.open(path) as src:
                src.read(1, window=((0, 1), (0, 1)))
        except Exception as exc:  # noqa: BLE001 - any rasterio failure means unreadable
            raise InputFileError(path, f"not a readable GeoTIFF ({exc})") from None
        return
    from tasks.readers import detect_format

    detect_format(path)


def _fetch_into(settings: Settings, product: str, remote: Remote, granule: RemoteGranule, dst: Path,
                breaker: CircuitBreaker) -> None:
    """One attempt: fetch `granule` into a new temp file, check it reads, publish it as `dst`; an
    unreadable one is quarantined (_Quarantined) and `dst` left as it was."""
    with atomic_path(dst) as tmp:
        breaker.call(lambda: remote.fetch(granule, tmp))
        try:
            _check_readable(product, tmp)
        except InputFileError as exc:
            # Kept for inspection; the manifest does not count it, so it is fetched again.
            # The note names the granule, not the download's temp file.
            problem = exc.problem.replace(str(tmp), granule.name).replace(tmp.name, granule.name)
            moved = quarantine(tmp, problem, settings.quarantine_dir, name=granule.name)
            raise _Quarantined(problem, moved) from None


def pull(settings: Settings, products: tuple[str, ...] | None = None, start: date | None = None,
         end: date | None = None, remotes: dict[str, Remote] | None = None) -> PullReport:
    """Fetch every granule of `products` dated in [start, end] (undated: always) not yet present."""
    real = settings.source == SourceMode.earthdata
    if real:
        from tasks.sources.credentials import apply_secret_blocks

        apply_secret_blocks(settings.earthdata_secret_block, settings.cds_secret_block)
    network = (bounded_requests(settings.source_connect_timeout_s, settings.source_read_timeout_s)
               if real else nullcontext())
    with network:
        return _pull(settings, products or products_for(settings), start, end, remotes or {})


def _pull(settings: Settings, products: tuple[str, ...], start: date | None, end: date | None,
          remotes: dict[str, Remote]) -> PullReport:
    manifest = Manifest(settings.manifest_path, data_dir=settings.data_dir)
    report = PullReport(products=list(products))
    breakers: dict[str, CircuitBreaker] = {}
    storage_failure: str | None = None  # the raw cache's disk failed (full): the pull stops
    for product in products:
        if storage_failure is not None:
            report.fetched[product] = []
            report.failed[product] = f"not pulled, the raw cache cannot be written: {storage_failure}"
            continue
        service = service_of(settings, product)
        breaker = breakers.setdefault(service, CircuitBreaker(service, settings.source_breaker_failures))
        fetched: list[str] = []
        report.fetched[product] = fetched
        report.replaced[product] = []
        report.skipped[product] = 0
        rows: list[dict] = []
        try:
            remote = remotes.get(product) or remote_for(settings, product)
            granules = with_retries(lambda: breaker.call(lambda: remote.list(product, start, end)),
                                    f"listing {product}")
        except Exception as exc:  # noqa: BLE001 - one product's failure must not stop the others
            report.failed[product] = redact(f"{type(exc).__name__}: {exc}")
            log.error("%s: cannot list granules: %s", product, report.failed[product])
            if breaker.is_open:
                report.unreachable[service] = breaker.reason or ""
            continue
        present = manifest.present(product)
        asked = manifest.recently_unavailable(product, settings.unavailable_recheck_days)
        # Read at pull but quarantined at gridding: the same remote id would bring the same bytes.
        rejected = manifest.rejected(product)
        report.unavailable[product] = 0
        for granule in granules:
            if granule.remote_id in present or granule.remote_id in asked or granule.remote_id in rejected:
                report.skipped[product] += 1
                continue
            dst = settings.raw(product) / granule.name
            had_copy = dst.is_file()
            try:
                # Each attempt writes a temp file of its own: one left by a failed attempt (a full
                # disk) would make every retry fail on it instead of trying again.
                with_retries(lambda: _fetch_into(settings, product, remote, granule, dst, breaker),
                             f"fetching {granule.name}", passthrough=(GranuleUnavailable, _Quarantined))
            except GranuleUnavailable as why:
                rows.append(Manifest.row(product, granule.day, granule.remote_id, dst, "unavailable", str(why)))
                report.unavailable[product] += 1
                continue
            except _Quarantined as q:
                rows.append(Manifest.row(product, granule.day, granule.remote_id, q.moved, "quarantined", q.problem))
                report.quarantined.append({"product": product, "file": granule.name, "problem": q.problem,
                                           "quarantined_as": str(q.moved)})
                continue
            except Exception as exc:  # noqa: BLE001 - the rest of the day goes on
                report.failed[product] = redact(f"{granule.name}: {type(exc).__name__}: {exc}")
                log.error("%s: %s", product, report.failed[product])
                if breaker.is_open:  # the service is given up for this run: its other granules too
                    report.unreachable[service] = breaker.reason or ""
                    break
                if is_storage_failure(exc):
                    # The raw cache's disk: every further granule would wait through the same retries.
                    storage_failure = report.failed[product]
                    break
                continue
            rows.append(Manifest.row(product, granule.day, granule.remote_id, dst, "ok"))
            fetched.append(granule.name)
            if had_copy:
                report.replaced[product].append(granule.name)
        manifest.record(rows)
        log.info("%s: %d new granules, %d already present", product, len(fetched), report.skipped[product])
    return report


def every_source_failed(report: PullReport) -> str | None:
    """When no product of the pull could be pulled (each failed; none merely had nothing new), a
    message naming each product and why; else None."""
    asked = report.products or list(report.fetched)
    if not asked or any(p not in report.failed or report.fetched.get(p) for p in asked):
        return None
    lines = [f"every source failed to pull ({', '.join(asked)}):"]
    lines += [f"  {product}: {report.failed[product]}" for product in asked]
    lines += [f"  {service}: given up for this run after repeated connection failures; the next run tries again"
              for service in report.unreachable]
    return "\n".join(lines)


def raw_granules(settings: Settings, product: str) -> dict[date, list[Path]]:
    """Granules in the raw cache by day."""
    spec = PRODUCTS[product]
    out: dict[date, list[Path]] = {}
    folder = settings.raw(product)
    for p in sorted(folder.glob("*")) if folder.is_dir() else []:
        day = spec.day(p.name)
        if day is not None and p.is_file():
            out.setdefault(day, []).append(p)
    return out
