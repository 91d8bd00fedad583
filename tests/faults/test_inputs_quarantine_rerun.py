"""Issue 21, item 6: quarantine is idempotent. A bad file still in the source is fetched and found
bad again by every run; the same bytes (sha256) under the same name add no copy and no note (the
quarantine folder used to grow on every identical rerun). Other bytes under that name are news."""

from __future__ import annotations

import json
from datetime import date

from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.io.quarantine import last_quarantine_note, quarantine
from tasks.settings import load_settings
from tasks.sources import pull

DAY = date(2020, 6, 1)


def _contents(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_rerun_over_the_same_bad_granule_adds_no_note(tmp_path):
    source = tmp_path / "downloads"
    write_oco_lite(source / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    write_gosat_c3s(source / "gosat", tiny_soundings("gosat", DAY), day=DAY)
    granule = next((source / "oco2").glob("*.nc4"))
    good = granule.read_bytes()
    granule.write_bytes(good[: len(good) // 3])
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))

    first = pull(settings, products=("oco2",))
    assert len(first.quarantined) == 1
    kept = _contents(settings.quarantine_dir)
    assert len(kept) == 2  # the copy and its note
    for _ in range(2):
        again = pull(settings, products=("oco2",))
        # Still reported (the day still waits for it), but nothing new in the quarantine.
        assert [q["quarantined_as"] for q in again.quarantined] == [first.quarantined[0]["quarantined_as"]]
        assert _contents(settings.quarantine_dir) == kept
    assert not list((settings.raw_dir / "oco2").glob("*"))  # neither published nor left as a temp file

    granule.write_bytes(good[: len(good) // 2])  # damaged differently: news
    assert len(pull(settings, products=("oco2",)).quarantined) == 1
    assert len(_contents(settings.quarantine_dir)) == 4
    granule.write_bytes(good)  # the good file arrives
    assert pull(settings, products=("oco2",)).fetched["oco2"] == [granule.name]
    assert len(_contents(settings.quarantine_dir)) == 4


def test_the_same_bytes_are_recognised_by_digest_even_under_an_old_note(tmp_path):
    quarantine_dir = tmp_path / "quarantine"
    quarantine_dir.mkdir()
    # A copy quarantined before notes recorded a digest.
    (quarantine_dir / "20200601T000000_era5_20200601.nc").write_bytes(b"not netcdf")
    (quarantine_dir / "20200601T000000_era5_20200601.nc.json").write_text(json.dumps(
        {"file": "era5_20200601.nc", "quarantined_as": "x", "reason": "not NetCDF", "at": "20200601T000000"}))
    before = _contents(quarantine_dir)
    bad = tmp_path / "era5_20200601.nc"
    bad.write_bytes(b"not netcdf")
    moved = quarantine(bad, "not NetCDF", quarantine_dir)
    assert moved == quarantine_dir / "20200601T000000_era5_20200601.nc"
    assert not bad.exists() and _contents(quarantine_dir) == before
    assert last_quarantine_note(quarantine_dir, bad.name) == "quarantined at 20200601T000000: not NetCDF"


def test_different_bytes_within_one_second_are_both_kept(tmp_path):
    quarantine_dir = tmp_path / "quarantine"
    first, second = tmp_path / "a" / "granule.nc4", tmp_path / "b" / "granule.nc4"
    for path, payload in ((first, b"one"), (second, b"two")):
        path.parent.mkdir()
        path.write_bytes(payload)
    one = quarantine(first, "truncated", quarantine_dir)
    two = quarantine(second, "truncated", quarantine_dir)
    assert one != two and one.read_bytes() == b"one" and two.read_bytes() == b"two"
    notes = [json.loads(p.read_text()) for p in sorted(quarantine_dir.glob("*.json"))]
    assert len(notes) == 2 and {n["quarantined_as"] for n in notes} == {str(one), str(two)}
    assert all(len(n["sha256"]) == 64 for n in notes)
