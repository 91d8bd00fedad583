"""Pulling granules from a directory source (demo and local modes share this path)."""

from __future__ import annotations

from datetime import date

import importlib

import pytest

from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.settings import load_settings
from tasks.sources import Manifest, pull, raw_granules

pull_module = importlib.import_module("tasks.sources.pull")  # the package re-exports the function
retry_module = importlib.import_module("tasks.sources.retry")
DAY = date(2020, 6, 1)


@pytest.fixture
def remote(tmp_path):
    root = tmp_path / "downloads"
    write_oco_lite(root / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    write_oco_lite(root / "oco3", tiny_soundings("oco3", DAY), mission="oco3", day=DAY)
    write_gosat_c3s(root / "gosat", tiny_soundings("gosat", DAY), day=DAY)
    return root


def _settings(tmp_path, remote):
    return load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(remote))


def test_second_pull_fetches_nothing(tmp_path, remote):
    settings = _settings(tmp_path, remote)
    first = pull(settings, products=("oco2", "oco3", "gosat"))
    assert first.n_fetched == 3 and not first.quarantined
    assert set(raw_granules(settings, "oco2")) == {DAY}
    second = pull(settings, products=("oco2", "oco3", "gosat"))
    assert second.n_fetched == 0 and second.skipped == {"oco2": 1, "oco3": 1, "gosat": 1}
    rows = Manifest(settings.manifest_path).load()
    assert len(rows) == 3 and set(rows["status"]) == {"ok"}
    assert all(len(h) == 64 for h in rows["sha256"]) and (rows["size"] > 0).all()


def test_window_limits_dated_granules(tmp_path, remote):
    settings = _settings(tmp_path, remote)
    assert pull(settings, products=("oco2",), start=date(2020, 6, 2)).n_fetched == 0
    assert pull(settings, products=("oco2",), start=DAY, end=DAY).n_fetched == 1


def test_truncated_granule_is_quarantined_then_fetched_again(tmp_path, remote):
    settings = _settings(tmp_path, remote)
    granule = next((remote / "oco2").glob("*.nc4"))
    good = granule.read_bytes()
    granule.write_bytes(good[: len(good) // 3])
    report = pull(settings, products=("oco2", "gosat"))
    assert report.fetched["oco2"] == [] and report.fetched["gosat"]
    assert len(report.quarantined) == 1 and granule.name in report.quarantined[0]["file"]
    assert list(settings.quarantine_dir.glob(f"*{granule.name}"))
    assert not (settings.raw_dir / "oco2" / granule.name).exists()
    granule.write_bytes(good)  # the archive serves a complete copy next time
    again = pull(settings, products=("oco2", "gosat"))
    assert again.fetched["oco2"] == [granule.name] and again.fetched["gosat"] == []


def test_interrupted_download_leaves_nothing_visible_and_is_fetched_next_run(tmp_path, remote, monkeypatch):
    settings = _settings(tmp_path, remote)
    directory = pull_module.remote_for(settings, "oco2")
    attempts = []

    class Interrupted:
        def list(self, product, start, end):
            return directory.list(product, start, end)

        def fetch(self, granule, dest):
            attempts.append(granule.name)
            with open(dest, "wb") as fh:
                fh.write(b"partial")
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(retry_module.time, "sleep", lambda s: None)
    report = pull(settings, products=("oco2", "gosat"), remotes={"oco2": Interrupted()})
    assert len(attempts) == 4  # transient: retried with backoff
    assert "connection reset" in report.failed["oco2"] and report.fetched["gosat"]  # gosat went on
    folder = settings.raw_dir / "oco2"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert pull(settings, products=("oco2",)).fetched["oco2"]  # nothing recorded: fetched next run


def test_unavailable_granule_is_not_an_error_and_is_asked_again_later(tmp_path, remote):
    from tasks.sources.remote import GranuleUnavailable

    directory = pull_module.remote_for(_settings(tmp_path, remote), "gosat")
    asked = []

    class NotYet:
        def list(self, product, start, end):
            return directory.list(product, start, end)

        def fetch(self, granule, dest):
            asked.append(granule.name)
            raise GranuleUnavailable("no data for this day yet")

    settings = _settings(tmp_path, remote)
    first = pull(settings, products=("gosat",), remotes={"gosat": NotYet()})
    assert first.unavailable["gosat"] == 1 and not first.failed and first.fetched["gosat"] == []
    pull(settings, products=("gosat",), remotes={"gosat": NotYet()})
    assert len(asked) == 1  # not asked again within the recheck period
    eager = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(remote),
                          unavailable_recheck_days=0)
    assert pull(eager, products=("gosat",)).fetched["gosat"]  # asked again, and now it is there
