"""Issue 21, item 4: a pull that meets a full disk. Each attempt writes a temp file of its own (a
retry used to reopen the failed attempt's temp file and fail on FileExistsError); when the
attempts are used up, the error names the cause: disk full, the folder and the free space. No
temp file is left, and the pull stops instead of waiting through the retries of every granule."""

from __future__ import annotations

import errno
import functools
import importlib
import re
import shutil
from datetime import date
from pathlib import Path

import pytest

from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.settings import load_settings
from tasks.sources import raw_granules

pull_module = importlib.import_module("tasks.sources.pull")  # the package re-exports the function
retry_module = importlib.import_module("tasks.sources.retry")
remote_module = importlib.import_module("tasks.sources.remote")
DAY, NEXT_DAY = date(2020, 6, 1), date(2020, 6, 2)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "downloads"
    write_oco_lite(root / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    write_oco_lite(root / "oco2", tiny_soundings("oco2", NEXT_DAY), mission="oco2", day=NEXT_DAY)
    write_gosat_c3s(root / "gosat", tiny_soundings("gosat", DAY), day=DAY)
    return root


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(pull_module, "with_retries", functools.partial(retry_module.with_retries, sleep=waited.append))
    return waited


def _full_disk_for(monkeypatch, failures: int) -> list[Path]:
    """The first `failures` copies write part of the file, then the disk is full (ENOSPC)."""
    temps: list[Path] = []
    real_copy = remote_module.copy_unshared

    def copy(src: Path, dest: Path) -> None:
        temps.append(Path(dest))
        if len(temps) <= failures:
            with open(dest, "xb") as fh:  # as the real copy opens it: a leftover would stop the next attempt
                fh.write(b"\0" * 1024)
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        real_copy(src, dest)

    monkeypatch.setattr(remote_module, "copy_unshared", copy)
    return temps


def _leftovers(settings) -> list[str]:
    return sorted(p.name for p in settings.data_dir.rglob("*.tmp"))


def test_a_retry_after_a_full_disk_starts_with_a_new_temp_file(tmp_path, source, sleeps, monkeypatch):
    temps = _full_disk_for(monkeypatch, failures=1)  # space is freed before the second attempt
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    report = pull_module.pull(settings, products=("gosat",))
    assert report.failed == {} and len(report.fetched["gosat"]) == 1
    assert len(temps) == 2 and temps[0] != temps[1] and len(sleeps) == 1
    assert set(raw_granules(settings, "gosat")) == {DAY}
    assert _leftovers(settings) == []


def test_a_disk_that_stays_full_is_named_with_the_free_space(tmp_path, source, sleeps, monkeypatch):
    temps = _full_disk_for(monkeypatch, failures=100)
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    report = pull_module.pull(settings, products=("oco2", "gosat"))
    # Four attempts at the first granule, each on a temp file of its own; then the pull stops.
    assert len(temps) == 4 and len(set(temps)) == 4 and len(sleeps) == 3
    why = report.failed["oco2"]
    assert "FileExistsError" not in why
    assert "disk full (ENOSPC)" in why and str(settings.raw_dir / "oco2") in why
    assert "bytes free on its filesystem" in why and "gave up after 4 attempts" in why
    free = re.search(r"\(([\d,]+) bytes free on its filesystem\)", why)
    assert free is not None, why  # the free space as measured then (other processes write meanwhile)
    assert abs(int(free.group(1).replace(",", "")) - shutil.disk_usage(settings.raw_dir).free) < 1 << 30
    assert report.failed["gosat"].startswith("not pulled, the raw cache cannot be written: ")
    assert "disk full (ENOSPC)" in report.failed["gosat"]
    assert report.n_fetched == 0 and _leftovers(settings) == []
    assert not any((settings.raw_dir / "oco2").glob("*"))
    message = pull_module.every_source_failed(report)
    assert message is not None and message.count("disk full (ENOSPC)") == 2
