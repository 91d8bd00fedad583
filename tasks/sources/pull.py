"""Pulling new granules into the raw cache, whatever the source mode."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from tasks.atomic import atomic_path
from tasks.quarantine import InputFileError, quarantine
from tasks.settings import Settings, SourceMode
from tasks.sources.manifest import Manifest
from tasks.sources.products import PRODUCTS

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    pass


@dataclass
class PullReport:
    fetched: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict] = field(default_factory=list)

    @property
    def n_fetched(self) -> int:
        return sum(len(v) for v in self.fetched.values())


def remote_root(settings: Settings) -> Path:
    if settings.source == SourceMode.demo:
        return settings.data_dir / "demo" / "remote"
    if settings.source == SourceMode.local:
        assert settings.local_dir is not None
        return settings.local_dir
    raise SourceError(
        f"source mode {settings.source.value!r} has no directory to pull from; "
        "use XCO2_SOURCE=demo or XCO2_SOURCE=local with XCO2_LOCAL_DIR"
    )


def _list_remote(root: Path, product: str) -> list[Path]:
    spec = PRODUCTS[product]
    if not root.is_dir():
        raise FileNotFoundError(f"source directory {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and spec.matches(p.name))


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)  # same filesystem: instant and no extra disk
        except OSError:
            shutil.copyfile(src, tmp)


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


def raw_dir(settings: Settings, product: str) -> Path:
    return settings.raw_dir / product


def pull(settings: Settings, products=tuple(PRODUCTS), start: date | None = None,
         end: date | None = None) -> PullReport:
    """Fetch every granule of `products` dated in [start, end] (undated: always) not yet present."""
    manifest = Manifest(settings.raw_dir / "manifest.parquet")
    root = remote_root(settings)
    report = PullReport()
    rows = []
    for product in products:
        spec = PRODUCTS[product]
        present = manifest.present(product)
        fetched, skipped = [], 0
        for src in _list_remote(root, product):
            day = spec.day(src.name)
            if day is not None and ((start and day < start) or (end and day > end)):
                continue
            remote_id = src.relative_to(root).as_posix()
            if remote_id in present:
                skipped += 1
                continue
            dst = raw_dir(settings, product) / src.name
            _copy_atomic(src, dst)
            try:
                _check_readable(product, dst)
            except InputFileError as exc:
                moved = quarantine(dst, exc.problem, settings.quarantine_dir)
                report.quarantined.append({"product": product, "file": src.name, "problem": exc.problem,
                                           "quarantined_as": str(moved)})
                rows.append(Manifest.row(product, day, remote_id, dst, "quarantined", exc.problem))
                continue
            rows.append(Manifest.row(product, day, remote_id, dst, "ok"))
            fetched.append(src.name)
        report.fetched[product] = fetched
        report.skipped[product] = skipped
        log.info("%s: %d new granules, %d already present", product, len(fetched), skipped)
    manifest.record(rows)
    return report


def raw_granules(settings: Settings, product: str) -> dict[date, list[Path]]:
    """Granules in the raw cache by day."""
    spec = PRODUCTS[product]
    out: dict[date, list[Path]] = {}
    folder = raw_dir(settings, product)
    for p in sorted(folder.glob("*")) if folder.is_dir() else []:
        day = spec.day(p.name)
        if day is not None and p.is_file():
            out.setdefault(day, []).append(p)
    return out
