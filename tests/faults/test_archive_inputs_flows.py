"""Issue 21 through the flows, on a tiny demo world with a champion: an archive that stays true to
its inputs.

- a neighbour's ERA5 held back: the daily run maps the look-back without that neighbour's
  samples; once the file is delivered the next run samples it and redoes the days whose window
  it is in, and their COGs equal the undisturbed run's byte for byte;
- a GOSAT fit made while a GOSAT day was missing: once the granule arrives, the daily run
  refits on the same days, re-fuses the samples the partial fit fused, says so, and the store,
  the fit and the archive equal the undisturbed run's;
- `backfill --stale` over the whole archive redoes the days whose samples changed, says why,
  and is a no-op once the archive is true.

Slow (a demo world, one short retrain, a few daily runs); the decisions are unit-tested in
test_archive_inputs.py.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from demo_world import write_demo_world
from flows.backfill import run_backfill
from flows.daily import daily_update
from flows.retrain import monthly_retrain
from tasks.archive import day_cog_path, day_item_path
from tasks.samples.ingest import footprint_file, gosat_fit_file, gridded_file, refit_gosat_and_refuse
from tasks.samples.store import day_file, read_day, stored_days, write_day
from tasks.gridding.geometry import Grid
from tasks.settings import Region, load_settings

pytestmark = pytest.mark.slow

MODEL = "faults-archive-inputs"
START = date(2020, 6, 1)
DAYS = 5
END = START + timedelta(days=DAYS - 1)
ARCHIVED = [END - timedelta(days=1), END]
NEIGHBOUR = START + timedelta(days=2)  # inside the archived days' windows, outside the look-back
REGION = Region(name="chengdu-tiny", west=103.95, south=30.55, east=104.15, north=30.75)


def daily(overrides) -> dict:
    return daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)


def region_dir(overrides) -> Path:
    return load_settings(**overrides).region_dir


def archive_bytes(overrides) -> dict[str, bytes]:
    root = Path(overrides["data_dir"]) / "archive"
    return {p.name: p.read_bytes() for d in ARCHIVED
            for p in (day_cog_path(root, REGION.name, d), day_item_path(root, REGION.name, d))}


def store_bytes(overrides) -> dict[str, bytes]:
    rd = region_dir(overrides)
    return {d.isoformat(): day_file(rd, d).read_bytes() for d in stored_days(rd)}


@pytest.fixture(scope="module")
def world(prefect_harness, tracking_uri, tmp_path_factory):
    """The undisturbed run: a 5-day world, a champion, its last 2 days archived; returns
    (the data dir, overrides, archive bytes, sample store bytes, the fit's id)."""
    root = tmp_path_factory.mktemp("archive-inputs")
    overrides = {"data_dir": str(root / "xco2-data"), "source": "demo", "region": REGION.model_dump(),
                 "archive_lookback_days": len(ARCHIVED), "max_epochs": 1, "max_training_samples": 1000,
                 "max_validation_samples": 300, "comparison_protocols": [],
                 "mlflow_tracking_uri": tracking_uri, "registered_model_name": MODEL}
    settings = load_settings(**overrides)
    write_demo_world(settings.data_dir / "demo", settings.region, START, END, grid_step=settings.grid_step,
                     seed=20200601, dense=True)
    daily(overrides)
    monthly_retrain(overrides=overrides)
    first = daily(overrides)
    assert [r["day"] for r in first["archive_days"]] == [d.isoformat() for d in ARCHIVED]
    fit_id = json.loads(gosat_fit_file(settings.region_dir).read_text())["fit_id"]
    return Path(overrides["data_dir"]), overrides, archive_bytes(overrides), store_bytes(overrides), fit_id


def copy_of(world, tmp_path: Path) -> dict:
    data_dir, overrides = world[0], world[1]
    shutil.copytree(data_dir, tmp_path / "xco2-data")
    return {**overrides, "data_dir": str(tmp_path / "xco2-data")}


def hold_back(overrides, product: str, day: date, held: Path) -> None:
    """The remote does not have the day's file yet, and neither has the raw cache."""
    data_dir = Path(overrides["data_dir"])
    held.mkdir(exist_ok=True)
    stamp = f"{day:%Y%m%d}"
    remote = [p for p in (data_dir / "demo" / "remote" / product).rglob("*") if p.is_file() and stamp in p.name]
    assert remote, f"no {product} file of {day} in the demo remote"
    for p in remote:
        shutil.move(p, held / p.name)
    for p in (data_dir / "raw" / product).rglob("*"):
        if p.is_file() and stamp in p.name:
            p.unlink()


def deliver(overrides, product: str, held: Path) -> None:
    remote = Path(overrides["data_dir"]) / "demo" / "remote" / product
    for p in held.iterdir():
        shutil.move(p, remote / p.name)


def test_a_day_mapped_while_a_neighbours_era5_was_missing_is_redone_once_it_arrives(world, tmp_path):
    _, _, undisturbed, _, _ = world
    overrides = copy_of(world, tmp_path)
    rd = region_dir(overrides)
    root = Path(overrides["data_dir"]) / "archive"
    # As if the neighbour's ERA5 had been held back from the start: the days it feeds have no samples.
    hold_back(overrides, "era5", NEIGHBOUR, tmp_path / "held")
    for d in (NEIGHBOUR - timedelta(days=1), NEIGHBOUR):
        shutil.rmtree(day_file(rd, d).parent)
    for d in ARCHIVED:
        day_cog_path(root, REGION.name, d).unlink()

    damaged = daily(overrides)
    assert [r["day"] for r in damaged["archive_days"]] == [d.isoformat() for d in ARCHIVED]
    assert archive_bytes(overrides) != undisturbed  # mapped without the neighbour's observations

    deliver(overrides, "era5", tmp_path / "held")
    recovered = daily(overrides)

    redone = {r["day"]: r["why"] for r in recovered["redone_days"]}
    assert sorted(redone) == [d.isoformat() for d in ARCHIVED]
    assert all(f"samples of {NEIGHBOUR - timedelta(days=1)}, {NEIGHBOUR} arrived" in why for why in redone.values())
    assert archive_bytes(overrides) == undisturbed

    again = daily(overrides)
    assert again["archive_days"] == [] and again["redone_days"] == []


def test_a_gosat_fit_made_on_partial_data_is_refitted_and_its_samples_refused(world, tmp_path):
    _, _, undisturbed, undisturbed_store, undisturbed_fit = world
    overrides = copy_of(world, tmp_path)
    settings = load_settings(**overrides)
    rd = settings.region_dir
    # A GOSAT day missing when the retrain refitted: the fit and the samples it fused are partial.
    hold_back(overrides, "gosat", NEIGHBOUR, tmp_path / "held")
    for path in (gridded_file(rd, "gosat", NEIGHBOUR), footprint_file(rd, "gosat", NEIGHBOUR)):
        path.unlink()
    partial = refit_gosat_and_refuse(rd, settings.raw("era5"), Grid.for_region(settings.region, settings.grid_step))
    assert partial.fit.fit_id != undisturbed_fit and partial.rewritten
    assert not (read_day(rd, NEIGHBOUR)["source"] == "gosat").any()
    damaged = daily(overrides)  # the archive follows the partial fit: its days are stale and redone
    assert damaged["gosat_refit"] is None
    assert {r["day"] for r in damaged["redone_days"]} == {d.isoformat() for d in ARCHIVED}
    assert all(f"GOSAT fit {undisturbed_fit} -> {partial.fit.fit_id}" in r["why"] for r in damaged["redone_days"])
    assert archive_bytes(overrides) != undisturbed

    deliver(overrides, "gosat", tmp_path / "held")
    result = daily(overrides)

    refit = result["gosat_refit"]
    assert refit is not None and refit["previous_fit_id"] == partial.fit.fit_id
    assert refit["fit"]["fit_id"] == undisturbed_fit
    assert f"{partial.fit.n_collocations} -> {refit['fit']['n_collocations']} collocations" in refit["why"]
    assert refit["rewritten"]
    assert json.loads(gosat_fit_file(rd).read_text())["fit_id"] == undisturbed_fit
    assert store_bytes(overrides) == undisturbed_store
    # The archived days were made with the partial fit: redone, and as the undisturbed run's.
    assert sorted(r["day"] for r in result["redone_days"]) == [d.isoformat() for d in ARCHIVED]
    assert archive_bytes(overrides) == undisturbed

    again = daily(overrides)
    assert again["gosat_refit"] is None and again["archive_days"] == []


def test_backfill_stale_finds_and_redoes_the_days_whose_samples_changed(world, tmp_path):
    _, _, undisturbed, _, _ = world
    overrides = {**copy_of(world, tmp_path), "task_runner": "thread", "backfill_workers": 1}
    rd = region_dir(overrides)
    original = day_file(rd, NEIGHBOUR).read_bytes()
    fewer = read_day(rd, NEIGHBOUR).iloc[1:].drop(columns=["day"])
    write_day(rd, NEIGHBOUR, fewer)  # the neighbour re-gridded with one cell fewer

    changed = run_backfill(None, None, overrides=overrides, stale_only=True)
    assert changed["window"] == [ARCHIVED[0].isoformat(), ARCHIVED[-1].isoformat()]
    assert [r["day"] for r in changed["days"]] == [d.isoformat() for d in ARCHIVED]
    assert set(changed["why"].values()) == {f"samples of {NEIGHBOUR} changed"}

    day_file(rd, NEIGHBOUR).write_bytes(original)  # and back as it was
    restored = run_backfill(None, None, overrides=overrides, stale_only=True)
    assert [r["day"] for r in restored["days"]] == [d.isoformat() for d in ARCHIVED]
    assert archive_bytes(overrides) == undisturbed

    assert run_backfill(None, None, overrides=overrides, stale_only=True)["days"] == []
