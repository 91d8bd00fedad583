"""The manifest of every granule ever pulled: what, when, where, how big, and whether it read.

A granule is known by (product, remote id). Only rows with status 'ok' whose local file still
exists count as present, so a quarantined or deleted granule is fetched again next time; one the
archive does not have yet ('unavailable') is asked for again after a while.
Credentials never enter it: only file names, sizes and checksums.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.atomic import atomic_path

COLUMNS = ["product", "day", "remote_id", "local_file", "size", "sha256", "retrieved_at", "status", "problem"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    path: Path

    def load(self) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
        return pd.read_parquet(self.path)

    def present(self, product: str) -> set[str]:
        df = self.load()
        df = df[(df["product"] == product) & (df["status"] == "ok")]
        return {rid for rid, f in zip(df["remote_id"], df["local_file"]) if Path(f).is_file()}

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
        merged = pd.concat([df[keep], new], ignore_index=True).astype({"size": "int64"})
        merged["day"] = merged["day"].astype("string")
        with atomic_path(self.path) as tmp:
            merged.to_parquet(tmp, index=False)

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
