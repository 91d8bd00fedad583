"""The manifest of every granule ever pulled: what, when, where, how big, and whether it read.

A granule is known by (product, remote id). Only rows with status 'ok' whose local file still
exists count as present, so a deleted granule, or one whose download failed its read check at
pull ('quarantined': a cut-off download may read next time), is fetched again next time; one the
archive does not have yet ('unavailable') is asked for again after a while. A granule that read
at pull but whose contents were then quarantined at gridding ('rejected', `mark_quarantined`)
is not fetched again: the same remote id would bring the same bytes. A new version of it in the
archive (local mode: a replaced file; Earthdata: a new granule id) has a new remote id.

`local_file` is stored relative to the data directory, so the data directory can be moved
without pulling everything again; rows written with absolute paths by earlier versions are read
too (mapped onto the current data directory by their raw/ or quarantine/ part).
Credentials never enter it: only file names, sizes and checksums.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.io.atomic import atomic_path
from tasks.io.quarantine import file_sha256, quarantine

log = logging.getLogger(__name__)

COLUMNS = ["product", "day", "remote_id", "local_file", "size", "sha256", "retrieved_at", "status", "problem"]


# One digest for the manifest and the quarantine: a file set aside is known again by it.
sha256 = file_sha256


# The data directory's folders a manifest row can point into (see `_relative`).
_DATA_FOLDERS = ("raw", "quarantine")


@dataclass
class Manifest:
    path: Path
    data_dir: Path | None = None  # default: the manifest lives at <data_dir>/raw/manifest.parquet

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.data_dir is None:
            self.data_dir = self.path.parent.parent
        self.data_dir = Path(self.data_dir)

    @property
    def root(self) -> Path:
        """The data directory (__post_init__ has filled `data_dir` in from the manifest's path)."""
        return self.data_dir if self.data_dir is not None else self.path.parent.parent

    def load(self) -> pd.DataFrame:
        """The rows, `local_file` relative to the data directory wherever it lies inside it."""
        if not self.path.is_file():
            return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
        try:
            df = pd.read_parquet(self.path)
            missing = [c for c in COLUMNS if c not in df.columns]
            if missing:
                raise ValueError(f"columns {missing} missing")
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a cut or foreign file vary
            # Only a record of what was pulled: set it aside (kept for inspection) and start anew.
            # The granules in the raw cache are pulled again over their copies; nothing is lost.
            moved = quarantine(self.path, f"unreadable manifest ({type(exc).__name__}: {exc}); a new one "
                               "is started and the granules are pulled again", self.root / "quarantine" / "state")
            log.warning("the manifest %s could not be read (%s): set aside as %s, a new one is started",
                        self.path, exc, moved)
            return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
        df["local_file"] = [self._relative(f) for f in df["local_file"]]
        return df

    def local_path(self, local_file: str) -> Path:
        """Where a row's file is now: relative paths hang off the current data directory."""
        path = Path(local_file)
        return path if path.is_absolute() else self.root / path

    @staticmethod
    def _here(local_file: str | Path | None) -> str | Path | None:
        """A path this process names (under settings.raw_dir: relative to the working directory when
        the data directory is, as the default `xco2-data` is) made absolute, so that `_relative`
        cuts it against the data directory. Left relative, `xco2-data/raw/...` was stored as is and
        then looked for under `xco2-data/xco2-data/raw/...`: every run pulled its window again."""
        if local_file is None or (isinstance(local_file, float) and pd.isna(local_file)):
            return None
        return Path(local_file).absolute()

    def _relative(self, local_file: str | Path | None) -> str | None:
        if local_file is None or (isinstance(local_file, float) and pd.isna(local_file)):
            return None
        path = Path(local_file)
        if not path.is_absolute():
            return path.as_posix()
        root = self.root.resolve()
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
        # An absolute row from a data directory that has since moved: its tail from the last raw/
        # or quarantine/ component names the same file under the current one.
        parts = path.parts
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] in _DATA_FOLDERS:
                tail = Path(*parts[i:])
                if (self.root / tail).exists() or not path.exists():
                    return tail.as_posix()
                break
        return str(path)

    def present(self, product: str) -> set[str]:
        df = self.load()
        df = df[(df["product"] == product) & (df["status"] == "ok")]
        return {rid for rid, f in zip(df["remote_id"], df["local_file"])
                if f is not None and self.local_path(f).is_file()}

    def rejected(self, product: str) -> set[str]:
        """Remote ids whose contents were quarantined at gridding: not worth fetching again."""
        df = self.load()
        df = df[(df["product"] == product) & (df["status"] == "rejected")]
        return set(df["remote_id"])

    def mark_quarantined(self, product: str, local_file_name: str, reason: str) -> int:
        """Mark the granule(s) of `product` cached as `local_file_name` as rejected: their file was
        quarantined after the pull (gridding found its contents unusable), so the pull does not
        fetch the same remote id again. Returns the number of rows changed (0: not in the manifest,
        e.g. a file put into the raw cache by hand)."""
        df = self.load()
        if df.empty:
            return 0
        names = [Path(f).name if f is not None else None for f in df["local_file"]]
        hit = (df["product"] == product).to_numpy() & (pd.Series(names) == local_file_name).to_numpy()
        hit &= (df["status"] != "rejected").to_numpy()
        n = int(hit.sum())
        if n:
            df.loc[hit, "status"] = "rejected"
            df.loc[hit, "problem"] = reason
            df.loc[hit, "retrieved_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._write(df)
        return n

    def mark_unusable(self, product: str, local_file: Path, reason: str) -> int:
        """Mark the row of the file cached at `local_file` 'quarantined': its contents proved
        unusable after the pull (ERA5 with NaN or impossible values). Unlike `mark_quarantined`,
        the pull fetches it again next run, as after a failed read check: the archive may deliver
        a good copy. Returns the number of rows changed."""
        df = self.load()
        if df.empty:
            return 0
        hit = ((df["product"] == product) & (df["local_file"] == self._relative(self._here(local_file)))
               & (df["status"] == "ok")).to_numpy()
        if hit.any():
            df.loc[hit, "status"] = "quarantined"
            df.loc[hit, "problem"] = reason
            self._write(df)
        return int(hit.sum())

    def recently_unavailable(self, product: str, within_days: float) -> set[str]:
        """Remote ids the archive said it did not have, asked less than `within_days` ago."""
        df = self.load()
        df = df[(df["product"] == product) & (df["status"] == "unavailable")]
        if df.empty:
            return set()
        asked = pd.to_datetime(df["retrieved_at"], utc=True)
        fresh = asked > pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=within_days)
        return set(df.loc[fresh.to_numpy(), "remote_id"])

    def record(self, rows: list[dict]) -> None:
        if not rows:
            return
        df = self.load()
        new = pd.DataFrame(rows, columns=COLUMNS)
        keys = set(zip(new["product"], new["remote_id"]))
        keep = [k not in keys for k in zip(df["product"], df["remote_id"])]
        new["local_file"] = [self._relative(self._here(f)) for f in new["local_file"]]
        self._write(pd.concat([df[keep], new], ignore_index=True))

    def _write(self, df: pd.DataFrame) -> None:
        df = df.astype({"size": "int64"})
        df["day"] = df["day"].astype("string")
        def reads_back_whole(temp: Path) -> None:
            n = len(pd.read_parquet(temp, columns=["remote_id"]))
            if n != len(df):
                raise ValueError(f"{n} rows read back, {len(df)} written")

        with atomic_path(self.path, verify=reads_back_whole) as tmp:
            df.to_parquet(tmp, index=False)

    @staticmethod
    def row(product: str, day: date | None, remote_id: str, local_file: Path, status: str,
            problem: str = "") -> dict:
        exists = local_file.is_file()
        return {
            "product": product,
            "day": day.isoformat() if day else None,
            "remote_id": remote_id,
            "local_file": str(local_file),
            "size": local_file.stat().st_size if exists else 0,
            "sha256": sha256(local_file) if exists else "",
            "retrieved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": status,
            "problem": problem,
        }
