"""Remembered file digests (tasks/io/file_digests.py): a digest over a growing history reads only
what changed, and never trusts a record over a rewritten file."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from tasks.io.atomic import publish_text
from tasks.io.file_digests import FileDigests
from tasks.samples import ingest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_pass_reads_no_file_and_a_rewritten_file_is_read_again(tmp_path):
    files = [publish_text(tmp_path / f"day{i}.txt", f"cells of day {i}\n") for i in range(5)]
    record = tmp_path / "digests.json"
    first = FileDigests(record)
    assert [first.sha256(f) for f in files] == [_sha(f) for f in files]
    assert first.hashed == 5
    first.save()

    second = FileDigests(record)
    assert [second.sha256(f) for f in files] == [_sha(f) for f in files]
    assert second.hashed == 0

    # Same size, new bytes, published as every writer here does (temp sibling, rename).
    publish_text(files[2], "cells of day X\n")
    third = FileDigests(record)
    assert third.sha256(files[2]) == _sha(files[2])
    assert third.hashed == 1
    assert third.sha256(tmp_path / "absent.txt") is None


def test_an_unreadable_record_is_ignored_and_replaced(tmp_path):
    f = publish_text(tmp_path / "a.txt", "a\n")
    record = tmp_path / "digests.json"
    record.write_text("{not json")
    digests = FileDigests(record)
    assert digests.sha256(f) == _sha(f) and digests.hashed == 1
    digests.save()
    assert FileDigests(record).sha256(f) == _sha(f)


def _gridded(region_dir: Path, source: str, day: date, xco2: float) -> None:
    for path in (ingest.gridded_file(region_dir, source, day), ingest.footprint_file(region_dir, source, day)):
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"cell": [1, 2], "xco2": [xco2, xco2 + 1]}).to_parquet(path)


def test_the_fit_digest_is_the_same_remembered_or_not_and_follows_a_regridded_day(tmp_path):
    days = [date(2020, 6, 1) + timedelta(days=i) for i in range(6)]
    for i, day in enumerate(days):
        _gridded(tmp_path, "gosat", day, 410 + i)
        _gridded(tmp_path, "oco2", day, 411 + i)
    cold = ingest.fit_inputs_digest(tmp_path, days[-1])
    assert ingest.fit_inputs_digests_file(tmp_path).is_file()
    assert ingest.fit_inputs_digest(tmp_path, days[-1]) == cold
    ingest.fit_inputs_digests_file(tmp_path).unlink()
    assert ingest.fit_inputs_digest(tmp_path, days[-1]) == cold

    _gridded(tmp_path, "oco2", days[3], 399)  # re-gridded with other soundings
    assert ingest.fit_inputs_digest(tmp_path, days[-1]) != cold
    assert ingest.fit_inputs_digest(tmp_path, days[2]) == ingest.fit_inputs_digest(tmp_path, days[2])
