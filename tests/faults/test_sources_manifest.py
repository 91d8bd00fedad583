"""Issue 10, case 13 (the manifest's part): paths in the manifest are relative to the data
directory, so moving it does not pull everything again (old manifests with absolute paths are
read too); a granule quarantined at gridding is marked and not pulled again until it changes."""

from __future__ import annotations

import os
import shutil
from datetime import date

import pandas as pd
import pytest

from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.settings import load_settings
from tasks.sources import Manifest, pull

DAY = date(2020, 6, 1)
PRODUCTS = ("oco2", "oco3", "gosat")


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "downloads"
    write_oco_lite(root / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    write_oco_lite(root / "oco3", tiny_soundings("oco3", DAY), mission="oco3", day=DAY)
    write_gosat_c3s(root / "gosat", tiny_soundings("gosat", DAY), day=DAY)
    return root


def _settings(data_dir, source):
    return load_settings(data_dir=str(data_dir), source="local", local_dir=str(source))


def _stored_paths(data_dir):
    return list(pd.read_parquet(data_dir / "raw" / "manifest.parquet")["local_file"])


def test_moved_data_dir_pulls_nothing_again(tmp_path, source):
    first = tmp_path / "old" / "xco2-data"
    assert pull(_settings(first, source), products=PRODUCTS).n_fetched == 3
    stored = _stored_paths(first)
    assert stored and all(not os.path.isabs(p) and p.startswith("raw/") for p in stored), stored
    moved = tmp_path / "new" / "xco2-data"
    moved.parent.mkdir()
    shutil.move(first, moved)
    again = pull(_settings(moved, source), products=PRODUCTS)
    assert again.n_fetched == 0 and again.skipped == {p: 1 for p in PRODUCTS}


def test_a_relative_data_dir_pulls_nothing_again(tmp_path, source, monkeypatch):
    # The default data dir, `xco2-data`, is relative: its rows are cut against it all the same, and
    # a second pull of the same window fetches nothing (it used to fetch everything again).
    monkeypatch.chdir(tmp_path)
    assert pull(_settings("xco2-data", source), products=PRODUCTS).n_fetched == 3
    stored = _stored_paths(tmp_path / "xco2-data")
    assert stored and all(p.startswith("raw/") for p in stored), stored
    again = pull(_settings("xco2-data", source), products=PRODUCTS)
    assert again.n_fetched == 0 and again.skipped == {p: 1 for p in PRODUCTS}


def test_old_absolute_manifest_still_counts_after_a_move(tmp_path, source):
    first = tmp_path / "old" / "xco2-data"
    pull(_settings(first, source), products=PRODUCTS)
    # As earlier versions wrote it: absolute paths into the data directory of the time.
    path = first / "raw" / "manifest.parquet"
    df = pd.read_parquet(path)
    df["local_file"] = [str((first / p).resolve()) for p in df["local_file"]]
    df.to_parquet(path, index=False)
    # Read in place, absolute rows under the data dir count ...
    assert pull(_settings(first, source), products=PRODUCTS).n_fetched == 0
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(first, moved)
    # ... and after a move they are mapped onto the new data dir by their raw/ part.
    again = pull(_settings(moved, source), products=PRODUCTS)
    assert again.n_fetched == 0 and again.skipped == {p: 1 for p in PRODUCTS}
    # The next write (a new granule arrives) stores them all relative.
    later = date(2020, 6, 2)
    write_oco_lite(source / "oco2", tiny_soundings("oco2", later), mission="oco2", day=later)
    assert pull(_settings(moved, source), products=("oco2",)).n_fetched == 1
    assert all(not os.path.isabs(p) for p in _stored_paths(moved))


def test_granule_quarantined_at_gridding_is_not_pulled_again_until_it_changes(tmp_path, source):
    settings = _settings(tmp_path / "data", source)
    pull(settings, products=("oco2",))
    cached = next((settings.raw_dir / "oco2").iterdir())
    manifest = Manifest(settings.manifest_path)
    cached.unlink()  # gridding moved it to quarantine/
    assert manifest.mark_quarantined("oco2", cached.name, "no valid soundings") == 1
    row = manifest.load().iloc[0]
    assert row["status"] == "rejected" and row["problem"] == "no valid soundings"
    again = pull(settings, products=("oco2",))
    assert again.n_fetched == 0 and again.skipped["oco2"] == 1
    assert manifest.mark_quarantined("oco2", "not-in-the-manifest.nc4", "x") == 0
    # A new version in the source (local mode: another size or time) is a new remote id: pulled.
    original = next((source / "oco2").iterdir())
    os.utime(original, ns=(original.stat().st_atime_ns, original.stat().st_mtime_ns + 10**9))
    assert pull(settings, products=("oco2",)).fetched["oco2"] == [cached.name]


def test_an_unreadable_manifest_is_set_aside_and_the_granules_pulled_again(tmp_path, source):
    """A manifest cut short (a crash of an older version, a damaged disk) is named, moved to
    quarantine/state with a note, and a new one started: the next pull fetches the granules again
    over their cached copies, and nothing already pulled is lost."""
    settings = _settings(tmp_path / "data", source)
    first = pull(settings, products=PRODUCTS)
    manifest = settings.manifest_path
    whole = manifest.read_bytes()
    manifest.write_bytes(whole[: len(whole) // 2])

    again = pull(settings, products=PRODUCTS)

    assert sorted(again.fetched) == sorted(first.fetched) and again.n_fetched == first.n_fetched
    notes = list((settings.data_dir / "quarantine" / "state").glob("*manifest.parquet.json"))
    assert len(notes) == 1 and "unreadable manifest" in notes[0].read_text()
    rows = Manifest(manifest).load()
    assert set(rows["status"]) == {"ok"} and len(rows) == first.n_fetched
    assert all((settings.data_dir / f).is_file() for f in rows["local_file"])
