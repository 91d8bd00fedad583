"""Whether a file of derived state is whole, judged cheaply, and the temp files of dead writers.

File helpers for the start-of-run check of derived state (tasks/steps/state_check.py, which sets
damaged files aside and recomputes them): a Parquet file judged from its footer and column chunks,
a .npy file from its header and size; and the hidden temp files that killed writers leave
(`tasks.io.atomic`'s `.<name>.<pid>.<hex>.tmp`, GDAL's side files named after them, the download
folders of the sources and the model cache), removed once their writer is no longer running.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

# Long enough for any single write or download we make; a temp file untouched for this long has
# no writer left even where its pid cannot be checked (no pid in the name, another host).
STALE_TEMP_AFTER_S = 6 * 3600

# tasks.io.atomic: ".<name>.<pid>.<8 hex>.tmp", plus GDAL side files "<that>.ovr.tmp", "<that>.aux.xml";
# models/onnx_export and tasks/analysis/training_figures: ".<name>.<pid>.tmp".
_PID_TEMP = re.compile(r"^\..+?\.(?P<pid>\d+)(?:\.[0-9a-f]{8})?\.tmp(?:\..+)?$")
# mkdtemp folders without a pid: the sources' downloads/imports and the model cache's staging.
_AGED_TEMP_DIR = re.compile(r"^\.(?:earthaccess-.*\.tmp|download-.*|import-.*\.tmp|.+\.dl-.+)$")


@dataclass(frozen=True)
class Finding:
    """One piece of state found wrong, and what was done about it."""

    kind: str      # samples, gridded cells, static covariates, NDVI covariates, covariates metadata, temp file
    path: str
    problem: str
    action: str

    def to_dict(self) -> dict:
        return asdict(self)


# ---- temp files of dead writers -------------------------------------------------------------

def remove_dead_temp_files(roots: list[Path], stale_after_s: float = STALE_TEMP_AFTER_S,
                           logger: Logger | None = None) -> list[Finding]:
    """Remove temp files and folders under `roots` whose writer is gone; a live writer's stay."""
    now = time.time()
    findings: list[Finding] = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            for name in list(dirs):
                if _AGED_TEMP_DIR.match(name) or _PID_TEMP.match(name):
                    dirs.remove(name)  # never descend into a writer's own folder
                    why = _dead_writer(here / name, name, now, stale_after_s)
                    if why:
                        shutil.rmtree(here / name, ignore_errors=True)
                        findings.append(Finding("temp file", str(here / name), why, "removed"))
            for name in files:
                if _PID_TEMP.match(name):
                    why = _dead_writer(here / name, name, now, stale_after_s)
                    if why:
                        (here / name).unlink(missing_ok=True)
                        findings.append(Finding("temp file", str(here / name), why, "removed"))
    if findings:
        logger = logger or log
        # A count (there can be many after a crash), then each one for whoever needs the detail.
        logger.warning("removed %d temp files of writers that are no longer running, e.g. %s (%s)",
                       len(findings), findings[0].path, findings[0].problem)
        for f in findings:
            logger.info("removed %s: %s", f.path, f.problem)
    return findings


def _dead_writer(path: Path, name: str, now: float, stale_after_s: float) -> str | None:
    """Why `path`'s writer is gone, or None while it may still be writing."""
    try:
        touched = _last_touched(path)
    except FileNotFoundError:
        return None  # its writer just renamed or removed it
    match = _PID_TEMP.match(name)
    if match:
        pid = int(match["pid"])
        started = _process_start(pid)
        if started is None:
            return f"writer pid {pid} is not running"
        # A reused pid: a process younger than the file did not write it.
        if started > touched + 1.0:
            return f"pid {pid} now belongs to a process started after the file was last written"
    if now - touched > stale_after_s:
        return f"untouched for {(now - touched) / 3600:.1f} h"
    return None


def _last_touched(path: Path) -> float:
    newest = path.stat().st_mtime
    if path.is_dir():
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    newest = max(newest, (Path(folder) / name).stat().st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), 0.0 if alive but unknown, None if gone."""
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        # Field 22 (start time in clock ticks after boot) counts from after the ")" ending the name.
        ticks = float(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


# ---- cheap integrity checks -----------------------------------------------------------------

def parquet_problem(path: Path, schema: pa.Schema) -> str | None:
    """What is wrong with a Parquet file, judged from its footer alone; None when it looks whole."""
    try:
        size = path.stat().st_size
        meta = pq.read_metadata(path)
        file_schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet footer ({type(exc).__name__}: {exc})"
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            starts = [o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o]
            end = (min(starts) if starts else 0) + chunk.total_compressed_size
            if end > size:
                return f"column {chunk.path_in_schema} of row group {g} ends at byte {end}, past the file's {size}"
    got = [(f.name, f.type) for f in file_schema]
    want = [(f.name, f.type) for f in schema]
    if got != want:
        return f"columns differ from the expected schema ({len(got)} columns, expected {len(want)})"
    return None


def npy_problem(path: Path, shape: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with a .npy file of float32 layers, judged from its header and size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            got_shape, _fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        return f"unreadable .npy header ({type(exc).__name__}: {exc})"
    if dtype != np.float32:
        return f"holds {dtype}, expected float32"
    expected = offset + math.prod(got_shape) * dtype.itemsize
    if size != expected:
        return f"{size} bytes, but its header ({got_shape} float32) needs {expected}"
    if shape is not None and tuple(got_shape) != tuple(shape):
        return f"shape {tuple(got_shape)}, the grid needs {tuple(shape)}"
    return None
