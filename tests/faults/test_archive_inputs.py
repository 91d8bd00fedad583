"""Issue 21, items 1 and 2 as pure decisions: what an archived day records about its inputs, when
that record makes it stale, and why a run redoes a day. Fast; the same through the flows is in
test_archive_inputs_flows.py (slow)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tasks.archive import day_cog_path, write_day_cog
from tasks.archive.provenance import (ABSENT, NO_RECORD, DayInputs, InputDigests, Provenance, input_window,
                                      recorded_provenance, stale_archive_days, stale_reasons, input_changes)
from tasks.archive.stac import item_properties
from tasks.gridding.geometry import Grid
from tasks.steps import backfill as backfill_steps
from tasks.steps import daily as daily_steps

DAY = date(2020, 6, 4)
GRID = Grid(west=100.0, south=30.0, east=100.2, north=30.2, step=0.01)


def record(**changes) -> Provenance:
    days = tuple(DayInputs(DAY + timedelta(days=i), f"s{i}", f"m{i}") for i in (-1, 0, 1))
    base = dict(model_name="m", model_version="3", gosat_fit_id="fit-a", window=(DAY - timedelta(days=1),
                DAY + timedelta(days=1)), days=days)
    return Provenance(**{**base, **changes})


def with_day(p: Provenance, day: date, samples: str | None = None, meteorology: str | None = None) -> Provenance:
    days = tuple(DayInputs(d.day, samples if d.day == day and samples is not None else d.samples,
                           meteorology if d.day == day and meteorology is not None else d.meteorology)
                 for d in p.days)
    return Provenance(p.model_name, p.model_version, p.gosat_fit_id, p.window, days)


def test_a_day_made_from_the_same_inputs_is_not_stale():
    assert stale_reasons(record(), record()) == []
    assert record().digest == record().digest


def test_each_change_of_what_a_day_was_made_from_makes_it_stale_and_says_which():
    now = record()
    assert stale_reasons(record(model_version="2"), now) == ["champion m v2 -> m v3"]
    assert stale_reasons(record(gosat_fit_id="fit-0"), now) == ["GOSAT fit fit-0 -> fit-a"]
    before = with_day(now, DAY - timedelta(days=1), samples=ABSENT)
    assert stale_reasons(before, now) == ["samples of 2020-06-03 arrived"]
    assert stale_reasons(now, before) == ["samples of 2020-06-03 went"]
    assert stale_reasons(with_day(now, DAY + timedelta(days=1), meteorology="old"), now) == [
        "meteorology of 2020-06-05 changed"]
    assert stale_reasons(None, now) == [NO_RECORD]
    # Every change moves the one digest too.
    assert len({p.digest for p in (now, record(model_version="2"), record(gosat_fit_id="x"), before)}) == 4


def test_input_changes_see_the_files_not_the_champion_or_fit():
    # What the daily run asks of the older days around its window: a new champion or fit alone is
    # backfill --stale's; a sample that arrived is the daily run's.
    now = record()
    assert input_changes(record(model_version="2", gosat_fit_id="fit-0"), now) == []
    before = with_day(record(model_version="2"), DAY, samples=ABSENT)
    assert input_changes(before, now) == ["samples of 2020-06-04 arrived"]
    assert input_changes(None, now) == []


def test_a_wider_window_is_stale_for_the_days_it_adds():
    narrow = record(window=(DAY, DAY), days=(DayInputs(DAY, "s0", "m0"),))
    reasons = stale_reasons(narrow, record())
    assert reasons[0] == "input window 2020-06-04/2020-06-04 -> 2020-06-03/2020-06-05"
    assert "samples of 2020-06-03, 2020-06-05 arrived" in reasons


def test_the_record_survives_the_cog_tags_and_holds_no_time():
    p = record()
    tags = p.to_tags()
    assert Provenance.from_tags({**tags, "model_name": "m", "model_version": "3"}) == p
    assert Provenance.from_tags({"model_name": "m"}) is None
    assert Provenance.from_tags({**tags, "inputs": "{not json"}) is None
    assert not any(str(date.today().year) in v for k, v in tags.items() if k != "inputs")


def test_the_stac_item_carries_the_record():
    tags = {"model_name": "m", "model_version": "3", **record().to_tags()}
    props = item_properties(tags)
    assert props["gosat_fit_id"] == "fit-a" and props["inputs_digest"] == record().digest
    assert props["inputs_window"] == "2020-06-03/2020-06-05"
    assert props["inputs"][0] == {"day": "2020-06-03", "samples": "s-1", "meteorology": "m-1"}


def test_input_window_follows_how_the_day_is_mapped():
    assert input_window(DAY, 15, 24) == (DAY - timedelta(days=15), DAY + timedelta(days=15))
    assert input_window(DAY, None, 24) == (DAY - timedelta(days=24), DAY)
    assert input_window(DAY, None, None) == (DAY, DAY)


def test_digests_follow_file_bytes_not_times(tmp_path):
    region_dir, era5_dir = tmp_path / "region", tmp_path / "era5"
    samples = region_dir / "samples" / f"day={DAY.isoformat()}" / "part-0.parquet"
    samples.parent.mkdir(parents=True)
    era5_dir.mkdir()
    samples.write_bytes(b"samples v1")
    (era5_dir / f"era5_single_levels_{DAY:%Y%m%d}.nc").write_bytes(b"era5")
    first = InputDigests(region_dir, era5_dir).day(DAY)
    assert first.samples != ABSENT and first.meteorology != ABSENT
    assert InputDigests(region_dir, era5_dir).day(DAY - timedelta(days=2)) == DayInputs(
        DAY - timedelta(days=2), ABSENT, ABSENT)

    samples.write_bytes(b"samples v1")  # rewritten, same bytes: same digest
    assert InputDigests(region_dir, era5_dir).day(DAY) == first
    samples.write_bytes(b"samples v2")
    assert InputDigests(region_dir, era5_dir).day(DAY).samples != first.samples
    # The next day's ERA5 closes this day's sums: it is part of this day's meteorology.
    (era5_dir / f"era5_single_levels_{DAY + timedelta(days=1):%Y%m%d}.nc").write_bytes(b"era5 next")
    assert InputDigests(region_dir, era5_dir).day(DAY).meteorology != first.meteorology


def _write_day(root: Path, day: date, tags: dict) -> Path:
    xco2 = np.full(GRID.shape, 415.0, dtype=np.float32)
    return write_day_cog(day_cog_path(root, "testland", day), xco2, GRID, {"units": "ppm", **tags})


def test_a_day_written_twice_from_the_same_record_is_the_same_bytes(tmp_path):
    tags = {"model_name": "m", "model_version": "3", **record().to_tags()}
    a = _write_day(tmp_path / "a", DAY, tags).read_bytes()
    b = _write_day(tmp_path / "b", DAY, tags).read_bytes()
    assert a == b


def test_stale_archive_days_reads_the_records_back(tmp_path):
    root = tmp_path / "archive"
    now = record()
    _write_day(root, DAY, {"model_name": "m", "model_version": "3", **now.to_tags()})
    _write_day(root, DAY + timedelta(days=1), {"model_name": "m", "model_version": "3"})  # before records
    older = with_day(now, DAY, samples="s-old")
    _write_day(root, DAY + timedelta(days=2), {"model_name": "m", "model_version": "3", **older.to_tags()})
    assert recorded_provenance(root, "testland", DAY) == now
    with rasterio.open(day_cog_path(root, "testland", DAY)) as src:
        assert src.tags()["inputs_digest"] == now.digest

    stale = stale_archive_days(root, "testland", [DAY + timedelta(days=i) for i in range(5)], lambda _d: now)
    assert stale == {DAY + timedelta(days=1): [NO_RECORD], DAY + timedelta(days=2): ["samples of 2020-06-04 changed"]}


def test_the_daily_run_says_why_it_maps_each_day():
    d1, d2, d3, d4 = (DAY + timedelta(days=i) for i in range(4))
    archived = {d1, d2, d3}
    stale = {d2: ["samples of 2020-06-03 arrived"]}
    todo = daily_steps.days_to_map([d1, d2, d3, d4], archived, {d3} | set(stale), lambda _d: True)
    assert todo == [d2, d3, d4]
    why = daily_steps.map_reasons(todo, archived, {d3}, stale)
    assert why == {d2: "samples of 2020-06-03 arrived", d3: daily_steps.ERA5_REPLACED, d4: daily_steps.MISSING}
    rows = [{"day": d.isoformat(), "why": why[d]} for d in todo]
    assert daily_steps.redone_rows(rows) == rows[:2]
    # A stale day whose inputs are not there waits (as a missing one does).
    assert daily_steps.days_to_map([d1, d2], archived, set(stale), lambda d: d != d2) == []


def test_the_daily_run_artifacts_list_the_redone_days_and_the_refit(tmp_path):
    from tasks.fusion.merge import GosatFit
    from tasks.sources.pull import PullReport

    fit = GosatFit(0.5, 1.0, 106, 0.3, 0.9, "offset")
    refit = {"why": "its GOSAT days through 2020-06-05 changed: 41 -> 106 collocations", "previous_fit_id": "old",
             "fit": fit.to_dict(), "rewritten": ["2020-06-01", "2020-06-02"], "resampled": [], "unchanged": 3}
    mapped = [{"day": "2020-06-04", "path": "x.tif", "why": "samples of 2020-06-03 arrived"},
              {"day": "2020-06-05", "path": "y.tif", "why": daily_steps.MISSING}]
    _write_day(tmp_path, date(2020, 6, 5), {})  # the quicklook's day
    artifacts = daily_steps.run_artifacts(DAY, DAY, "testland", tmp_path, PullReport(), [], fit, [], [], [], mapped,
                                          None, {}, gosat_refit=refit)
    by_key = {a.key: a for a in artifacts}
    assert by_key["daily-archive-redone"].table == [{"day": "2020-06-04", "why": "samples of 2020-06-03 arrived"}]
    assert by_key["daily-gosat-refit"].table[0]["sample_days_refused"] == "2020-06-01, 2020-06-02"
    summary = by_key["daily-summary"].markdown or ""
    assert "refitted (its GOSAT days through 2020-06-05 changed: 41 -> 106 collocations)" in summary
    assert "2020-06-04 (samples of 2020-06-03 arrived)" in summary


def test_a_stale_backfill_covers_the_whole_archive_and_says_why():
    archived = [DAY, DAY + timedelta(days=9)]
    assert backfill_steps.stale_window(None, None, archived) == [DAY + timedelta(days=i) for i in range(10)]
    assert backfill_steps.stale_window(None, "2020-06-05", archived) == [DAY, DAY + timedelta(days=1)]
    assert backfill_steps.stale_window(None, None, []) == []
    why = backfill_steps.reasons_for([DAY, DAY + timedelta(days=1)], {DAY: ["GOSAT fit a -> b"]},
                                     [DAY + timedelta(days=1)])
    assert why == {"2020-06-04": "GOSAT fit a -> b", "2020-06-05": backfill_steps.UNSOUND}


def test_the_cli_backfill_needs_a_window_unless_stale(monkeypatch):
    import flows.backfill
    from flows.cli import main

    calls = []
    monkeypatch.setattr(flows.backfill, "run_backfill", lambda **kw: calls.append(kw) or {
        "window": None, "task_runner": "process", "model": None, "days": [], "skipped_days": [], "why": {}})
    assert main(["backfill"]) == 2
    assert main(["backfill", "--stale"]) == 0
    assert calls == [{"start": None, "end": None, "overrides": None, "stale_only": True}]


@pytest.mark.parametrize("legacy_flag", ["--stale-only"])
def test_the_old_flag_still_means_stale(monkeypatch, legacy_flag):
    import flows.backfill
    from flows.cli import main

    calls = []
    monkeypatch.setattr(flows.backfill, "run_backfill", lambda **kw: calls.append(kw) or {
        "window": None, "task_runner": "process", "model": None, "days": [], "skipped_days": [], "why": {}})
    assert main(["backfill", legacy_flag, "--start", "2020-06-01", "--end", "2020-06-02"]) == 0
    assert calls[0]["stale_only"] is True
