"""The store of fused training samples: Parquet partitioned by day, one file per day.

`<region_dir>/samples/day=YYYY-MM-DD/part-0.parquet`; re-ingesting a day replaces its file
atomically (idempotent). The schema is checked on write and on read, and the feature-set
version travels in the Parquet metadata of every file.

Every row carries `weight`, the number of independent soundings it stands for (a GOSAT cell
~1/80, an OCO cell ~1/3: tasks.gridding.cells), and `fit_id`, the id of the GOSAT -> OCO fit that
mapped its target ('' for OCO rows, which no fit touches). A file of the previous schema (no
weight, no fit_id) is re-fused from its gridded files by the state check of the next daily run
or retrain; reading one says so.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io.atomic import atomic_path
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION

TARGET_SCHEMA = [
    pa.field("day", pa.date32(), nullable=False),
    pa.field("cell", pa.int64(), nullable=False),
    pa.field("row", pa.int32(), nullable=False),
    pa.field("col", pa.int32(), nullable=False),
    pa.field("xco2", pa.float64(), nullable=False),
    pa.field("xco2_uncertainty", pa.float64(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("n_soundings", pa.int32(), nullable=False),
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("fit_id", pa.string(), nullable=False),
]
SCHEMA = pa.schema(TARGET_SCHEMA + [pa.field(n, pa.float32(), nullable=False) for n in FEATURE_NAMES])
# Before rows carried their weight and fit id; such a file is sampled again, never read as is.
PREVIOUS_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in ("weight", "fit_id")])
VALID_SOURCES = {"oco2", "oco3", "oco2+oco3", "gosat"}


class SampleStoreError(ValueError):
    pass


def samples_dir(region_dir: Path) -> Path:
    return region_dir / "samples"


def day_file(region_dir: Path, day: date) -> Path:
    return samples_dir(region_dir) / f"day={day.isoformat()}" / "part-0.parquet"


def _check(df: pd.DataFrame, where: str) -> None:
    missing = [f.name for f in SCHEMA if f.name not in df.columns]
    if missing:
        raise SampleStoreError(f"{where}: missing columns {missing[:8]}{'...' if len(missing) > 8 else ''}")
    bad_sources = set(df["source"].unique()) - VALID_SOURCES
    if bad_sources:
        raise SampleStoreError(f"{where}: unknown sources {sorted(bad_sources)}")
    values = df[list(FEATURE_NAMES) + ["xco2", "weight", "fit_id"]]
    if values.isna().any().any():
        cols = values.columns[values.isna().any()].tolist()
        raise SampleStoreError(f"{where}: missing values in {cols[:8]}")
    if len(df) and (df["xco2"].min() < 300 or df["xco2"].max() > 500):
        lo, hi = df["xco2"].min(), df["xco2"].max()
        raise SampleStoreError(f"{where}: xco2 outside 300-500 ppm ({lo:.1f}..{hi:.1f})")
    weight = df["weight"].to_numpy(dtype="float64")
    if len(df) and not ((weight > 0) & (weight < float("inf"))).all():
        raise SampleStoreError(f"{where}: weight must be finite and > 0 (independent soundings per sample)")


def write_day(region_dir: Path, day: date, samples: pd.DataFrame) -> Path:
    """Replace the day's samples (an empty frame still records that the day was processed)."""
    samples = samples.copy()
    samples["day"] = day
    path = day_file(region_dir, day)
    _check(samples, f"samples for {day}")
    table = pa.Table.from_pandas(samples[[f.name for f in SCHEMA]], schema=SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({b"feature_set_version": FEATURE_SET_VERSION.encode()})

    def reads_back_whole(tmp: Path) -> None:
        # A short write (full disk) must not replace a good day.
        written = _read_file(tmp, shown_as=path)
        if written.num_rows != table.num_rows:
            raise SampleStoreError(f"{path}: wrote {table.num_rows} samples, read back {written.num_rows}")

    with atomic_path(path, verify=reads_back_whole) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def _read_file(path: Path, shown_as: Path | None = None) -> pa.Table:
    """One day's file, checked; every failure names the file (shown_as: its published name)."""
    shown = shown_as or path
    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        version = meta.get(b"feature_set_version", b"").decode()
        if version != FEATURE_SET_VERSION:
            raise SampleStoreError(
                f"{shown}: feature set {version or 'unknown'} differs from this code's {FEATURE_SET_VERSION}; re-ingest the day"
            )
        table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise SampleStoreError(f"{shown}: unreadable sample file ({type(exc).__name__}: {exc}); the next daily run "
                               "or retrain sets it aside and samples the day again") from None
    if table.schema.remove_metadata().equals(PREVIOUS_SCHEMA):
        raise SampleStoreError(f"{shown}: written by an earlier version (no weight or fit_id column); the state "
                               "check of the next daily run or retrain re-fuses the day from its gridded files "
                               "(run `xco2 daily` or `xco2 retrain`)")
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise SampleStoreError(f"{shown}: schema differs from the sample store's schema")
    return table


def read_day(region_dir: Path, day: date) -> pd.DataFrame:
    """One stored day's samples, checked."""
    return _read_file(day_file(region_dir, day)).to_pandas()


def stored_days(region_dir: Path) -> list[date]:
    root = samples_dir(region_dir)
    days = []
    for d in sorted(root.glob("day=*")) if root.is_dir() else []:
        if (d / "part-0.parquet").is_file():
            days.append(date.fromisoformat(d.name.removeprefix("day=")))
    return days


def read_samples(region_dir: Path, start: date | None = None, end: date | None = None) -> pd.DataFrame:
    frames = []
    for day in stored_days(region_dir):
        if (start and day < start) or (end and day > end):
            continue
        frames.append(_read_file(day_file(region_dir, day)).to_pandas())
    if not frames:
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SCHEMA})
    df = pd.concat(frames, ignore_index=True)
    _check(df, f"sample store {samples_dir(region_dir)}")
    return df
