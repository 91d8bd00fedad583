"""Issue 10, cases 13 and 3: damaged derived state is named, set aside and recomputed equal to the
undisturbed file; temp files of writers that are gone are removed, a live writer's stay.

The store is the small demo world (real file formats) taken through the daily path's plain
functions: pull, covariates, gridding, GOSAT fit, samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.demo import SMALL_REGION
from tasks.samples import ingest
from tasks.covariates.static import CovariateError, StaticCovariates, build_covariates
from tasks.gridding.geometry import Grid
from tasks.covariates.meteorology import era5_files_for_day
from tasks.samples.store import SampleStoreError, day_file, read_samples, write_day
from tasks.settings import load_settings
from tasks.sources import pull, raw_granules
from tasks.sources.products import SATELLITES
from tasks.io.integrity import npy_problem, parquet_problem, remove_dead_temp_files
from tasks.steps.state_check import check_state, set_aside

START, END = date(2020, 6, 1), date(2020, 6, 3)
DAMAGED_DAY = date(2020, 6, 2)


def settings_for(data_dir: Path):
    return load_settings(data_dir=str(data_dir), source="demo", region=SMALL_REGION.model_dump())


def build_store(data_dir: Path) -> None:
    """The small demo world pulled, gridded, fused and sampled as the daily update does it."""
    from demo_world import write_demo_world

    settings = settings_for(data_dir)
    grid = Grid.for_region(settings.region, settings.grid_step)
    write_demo_world(data_dir / "demo", settings.region, START, END, grid_step=settings.grid_step, dense=True)
    report = pull(settings, start=START, end=END + timedelta(days=1))
    assert not report.failed and report.n_fetched > 0
    build_covariates(settings.raw("static"), grid, settings.region_dir)
    granules = {s: raw_granules(settings, s) for s in SATELLITES}
    for day in sorted({d for s in SATELLITES for d in granules[s]}):
        ingest.grid_day(day, {s: granules[s].get(day, []) for s in SATELLITES}, grid, settings.region_dir,
                        settings.quarantine_dir)
    fit = ingest.fit_gosat(settings.region_dir, grid)
    era5 = settings.raw("era5")
    for day in ingest.load_gridded(settings.region_dir, "oco2"):
        assert all(p.is_file() for p in era5_files_for_day(era5, day))
        ingest.sample_day(settings.region_dir, era5, grid, day, fit)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("state") / "xco2-data"
    build_store(data_dir)
    return data_dir


@pytest.fixture
def store(pristine, tmp_path):
    """A private copy of the undisturbed store: (settings, grid)."""
    data_dir = tmp_path / "xco2-data"
    shutil.copytree(pristine, data_dir)
    settings = settings_for(data_dir)
    return settings, Grid.for_region(settings.region, settings.grid_step)


def truncate(path: Path, keep: float = 0.5) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original[: int(len(original) * keep)])
    return original


def assert_set_aside(settings, finding: dict, path: Path, damaged: bytes) -> None:
    """The finding names the file; quarantine/state/ holds the damaged bytes and a note saying why."""
    assert finding["path"] == str(path)
    notes = sorted((settings.quarantine_dir / "state").glob("*.json"))
    note = next(json.loads(n.read_text()) for n in notes if json.loads(n.read_text())["file"] == str(path))
    assert note["problem"] == finding["problem"] and note["kind"] == finding["kind"]
    assert Path(note["quarantined_as"]).read_bytes() == damaged


def findings_of(settings, grid, kind: str) -> list[dict]:
    return [f.to_dict() for f in check_state(settings, grid) if f.kind == kind]


def test_an_undisturbed_store_has_nothing_to_report(store):
    settings, grid = store
    assert check_state(settings, grid) == []
    assert not (settings.quarantine_dir / "state").exists()


def test_truncated_sample_file_is_named_set_aside_and_sampled_again(store, caplog):
    settings, grid = store
    path = day_file(settings.region_dir, DAMAGED_DAY)
    original = truncate(path)
    damaged = path.read_bytes()
    # What the retrain met before: now the read names the file instead of a bare ArrowInvalid.
    with pytest.raises(SampleStoreError, match=f"{path}: unreadable sample file"):
        read_samples(settings.region_dir)

    with caplog.at_level("WARNING", logger="tasks.steps.state_check"):
        [finding] = findings_of(settings, grid, "samples")
    assert "Parquet footer" in finding["problem"] and "sampled again" in finding["action"]
    assert f"state check: samples {path}: unreadable Parquet footer" in caplog.text
    assert_set_aside(settings, finding, path, damaged)
    assert path.read_bytes() == original
    assert len(read_samples(settings.region_dir)) > 1000
    assert check_state(settings, grid) == []


def test_truncated_gridded_file_is_gridded_again_from_the_raw_granules(store):
    settings, grid = store
    path = ingest.gridded_file(settings.region_dir, "oco2", DAMAGED_DAY)
    others = {s: ingest.gridded_file(settings.region_dir, s, DAMAGED_DAY).stat().st_mtime_ns for s in ("oco3", "gosat")}
    original = truncate(path, 0.8)
    damaged = path.read_bytes()
    with pytest.raises(ingest.GriddedStoreError, match=f"{path}: unreadable gridded cells file"):
        ingest.load_one(settings.region_dir, "oco2", DAMAGED_DAY)

    [finding] = findings_of(settings, grid, "gridded cells")
    assert "gridded again from 1 raw granules" in finding["action"]
    assert_set_aside(settings, finding, path, damaged)
    assert path.read_bytes() == original
    # Only the damaged source is redone.
    assert {s: ingest.gridded_file(settings.region_dir, s, DAMAGED_DAY).stat().st_mtime_ns for s in others} == others


def test_truncated_static_covariates_are_rebuilt_from_raw_static(store):
    settings, grid = store
    path = settings.region_dir / "covariates" / "static.npy"
    original = truncate(path)
    damaged = path.read_bytes()
    with pytest.raises(CovariateError, match=f"{path}: unreadable covariate layers"):
        StaticCovariates(settings.region_dir)

    [finding] = findings_of(settings, grid, "static covariates")
    assert "header" in finding["problem"] and "needs" in finding["problem"]
    assert "rebuilt from" in finding["action"]
    assert_set_aside(settings, finding, path, damaged)
    assert path.read_bytes() == original


def test_truncated_ndvi_layers_are_rebuilt(store):
    settings, grid = store
    [path] = (settings.region_dir / "covariates" / "ndvi").glob("*.npy")
    original = truncate(path, 0.9)
    with pytest.raises(CovariateError, match=str(path)):
        StaticCovariates(settings.region_dir).ndvi_for_day(DAMAGED_DAY)
    [finding] = findings_of(settings, grid, "NDVI covariates")
    assert path.read_bytes() == original and "rebuilt from" in finding["action"]


def test_unreadable_covariates_metadata_rebuilds_the_covariates(store):
    settings, grid = store
    folder = settings.region_dir / "covariates"
    originals = {p: p.read_bytes() for p in [folder / "static.json", folder / "static.npy", *folder.glob("ndvi/*.npy")]}
    truncate(folder / "static.json", 0.4)
    [finding] = findings_of(settings, grid, "covariates metadata")
    assert finding["path"] == str(folder / "static.json") and "rebuilt from" in finding["action"]
    assert {p: p.read_bytes() for p in originals} == originals


@pytest.mark.parametrize("what", ["samples", "gridded cells"])
def test_a_short_write_is_not_published_and_the_previous_file_stays(store, monkeypatch, what):
    """A write that returns normally but leaves a cut file (a full disk can) is caught by reading
    the temp file back; the published file stays the previous, whole one and no temp is left."""
    from tasks.io.atomic import PublishError

    settings, grid = store
    target = "tasks.samples.store.pq.write_table" if what == "samples" else "pandas.DataFrame.to_parquet"
    real = pq.write_table if what == "samples" else pd.DataFrame.to_parquet

    def short_write(*args, **kwargs):
        real(*args, **kwargs)
        truncate(Path(args[1]), 0.6)

    if what == "samples":
        path = day_file(settings.region_dir, DAMAGED_DAY)
        frame = read_samples(settings.region_dir, DAMAGED_DAY, DAMAGED_DAY)
        write = lambda: write_day(settings.region_dir, DAMAGED_DAY, frame)  # noqa: E731
    else:
        path = ingest.gridded_file(settings.region_dir, "oco3", DAMAGED_DAY)
        cells = ingest.load_one(settings.region_dir, "oco3", DAMAGED_DAY)
        write = lambda: ingest.write_gridded(settings.region_dir, "oco3", DAMAGED_DAY, cells)  # noqa: E731
    before = path.read_bytes()
    monkeypatch.setattr(target, short_write)
    with pytest.raises(PublishError, match=f"{path}: not published: the written file does not read back sound"):
        write()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    write()
    assert path.read_bytes() == before


def test_damage_upstream_and_downstream_at_once_is_healed_in_order(store):
    """Static layers, a gridded file and the day's samples all cut: samples need the other two."""
    settings, grid = store
    paths = [settings.region_dir / "covariates" / "static.npy",
             ingest.gridded_file(settings.region_dir, "gosat", DAMAGED_DAY),
             day_file(settings.region_dir, DAMAGED_DAY)]
    originals = [truncate(p, 0.3) for p in paths]
    (settings.region_dir / "gosat_fit.json").write_text("{")  # the fit is refitted

    findings = check_state(settings, grid)
    assert [f.kind for f in findings] == ["static covariates", "gridded cells", "samples"]
    assert [f.path for f in findings] == [str(p) for p in paths]
    assert [p.read_bytes() for p in paths] == originals


def test_a_sample_day_whose_meteorology_is_gone_is_set_aside_and_said_so(store):
    settings, grid = store
    path = day_file(settings.region_dir, DAMAGED_DAY)
    truncate(path)
    for f in settings.raw("era5").glob("*20200602*"):
        f.unlink()
    [finding] = findings_of(settings, grid, "samples")
    assert "could not be sampled again" in finding["action"] and "ERA5 for 2020-06-02" in finding["action"]
    assert not path.exists()  # no broken file left to break the retrain
    assert DAMAGED_DAY not in set(read_samples(settings.region_dir)["day"])


def test_cheap_checks_see_schema_and_size(store, tmp_path):
    settings, grid = store
    gridded = ingest.gridded_file(settings.region_dir, "oco2", DAMAGED_DAY)
    assert parquet_problem(gridded, ingest.GRIDDED_SCHEMA) is None
    table = pq.read_table(gridded).drop(["n_soundings"])
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(table, foreign)
    assert "columns differ" in parquet_problem(foreign, ingest.GRIDDED_SCHEMA)
    layers = tmp_path / "layers.npy"
    np.save(layers, np.zeros((2, 3, 4), np.float32))
    assert npy_problem(layers, (2, 3, 4)) is None
    assert "shape (2, 3, 4), the grid needs (2, 3, 5)" in npy_problem(layers, (2, 3, 5))
    with open(layers, "ab") as fh:
        fh.write(b"\0" * 4)
    assert "bytes, but its header" in npy_problem(layers)


def test_a_file_another_run_set_aside_first_is_left_to_that_run(store):
    settings, _grid = store
    path = day_file(settings.region_dir, DAMAGED_DAY)
    first = set_aside(path, "samples", "unreadable", settings)
    assert first is not None and first.is_file()
    assert set_aside(path, "samples", "unreadable", settings) is None
    assert len(list((settings.quarantine_dir / "state").glob("*.json"))) == 1


# ---- temp files of dead writers -----------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def _touch(path: Path, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(store, caplog):
    settings, grid = store
    data = settings.data_dir
    dead, live = _dead_pid(), os.getpid()
    year = settings.archive_root / SMALL_REGION.name / "2020"
    cog_temp = year / f".xco2_chengdu_20200602.tif.{dead}.0badc0de.tmp"
    gone = [
        _touch(data / "raw" / "oco2" / f".oco2_LtCO2_200602_B11100Ar_200710041758s.nc4.{dead}.1a2b3c4d.tmp"),
        _touch(cog_temp),
        _touch(cog_temp.with_name(cog_temp.name + ".ovr.tmp")),   # GDAL's side files named after ours
        _touch(cog_temp.with_name(cog_temp.name + ".aux.xml")),
        _touch(settings.region_dir / "samples" / "day=2020-06-02" / f".part-0.parquet.{dead}.deadbeef.tmp"),
        _touch(data / "models" / "3" / f".model.onnx.{dead}.tmp"),                     # models/onnx_export
        # This process's pid, but the file is older than the process: an earlier writer's reused pid.
        _touch(data / "regions" / SMALL_REGION.name / "fusion" / f".gosat_fit.json.{live}.00112233.tmp", 3 * 3600),
        # No pid in the name (mkdtemp folders): only age can tell.
        _touch(data / "models" / ".4.dl-k2j3h4" / "model.onnx", 7 * 3600).parent,
    ]
    os.utime(gone[-1], (time.time() - 7 * 3600,) * 2)
    kept = [
        _touch(year / f".xco2_chengdu_20200603.tif.{live}.abcdef01.tmp"),                # a live writer
        _touch(year / f".xco2_chengdu_20200603.tif.{live}.abcdef01.tmp.ovr.tmp"),
        _touch(data / "raw" / "era5" / ".download-x1y2" / "part.nc").parent,           # fresh, no pid
        _touch(settings.archive_root / SMALL_REGION.name / ".stac.lock"),              # not a temp file
    ]

    with caplog.at_level("WARNING", logger="tasks.io.integrity"):
        findings = check_state(settings, grid)
    assert "removed 8 temp files of writers that are no longer running" in caplog.text
    assert sorted(f.path for f in findings) == sorted(str(p) for p in gone)
    assert {f.kind for f in findings} == {"temp file"}
    assert not [p for p in gone if p.exists()]
    assert all(p.exists() for p in kept)
    why = {f.path: f.problem for f in findings}
    assert why[str(gone[0])] == f"writer pid {dead} is not running"
    assert "started after the file was last written" in why[str(gone[6])]
    assert why[str(gone[-1])].startswith("untouched for 7.0 h")


def test_temp_cleanup_spares_everything_when_writers_are_alive(tmp_path):
    live = os.getpid()
    files = [_touch(tmp_path / "raw" / f".granule.nc.{live}.0f0f0f0f.tmp"),
             _touch(tmp_path / "raw" / f".granule.nc.{live}.0f0f0f0f.tmp.aux.xml"),
             _touch(tmp_path / "raw" / "granule.nc")]
    assert remove_dead_temp_files([tmp_path / "raw", tmp_path / "missing"]) == []
    assert all(p.exists() for p in files)


def test_files_of_the_previous_schema_are_upgraded_in_place(store):
    """Gridded cells without weight, a GOSAT day without footprints and samples without weight or
    fit_id (the store before issue 11) are recomputed where they lie, equal to today's files."""
    from tasks.samples.ingest import GriddedStoreError

    settings, grid = store
    region = settings.region_dir
    gridded = ingest.gridded_file(region, "oco2", DAMAGED_DAY)
    footprints = ingest.footprint_file(region, "gosat", DAMAGED_DAY)
    sample = day_file(region, DAMAGED_DAY)
    originals = [p.read_bytes() for p in (gridded, footprints, sample)]
    pq.write_table(pq.read_table(gridded).drop(["weight"]), gridded)
    footprints.unlink()
    pq.write_table(pq.read_table(sample).drop(["weight", "fit_id"]), sample)
    with pytest.raises(GriddedStoreError, match=f"{gridded}: gridded by an earlier version"):
        ingest.load_one(region, "oco2", DAMAGED_DAY)
    with pytest.raises(GriddedStoreError, match=f"{footprints}: missing"):
        ingest.load_footprints(region, "gosat", [DAMAGED_DAY])
    with pytest.raises(SampleStoreError, match=f"{sample}: written by an earlier version"):
        read_samples(region)

    findings = [f.to_dict() for f in check_state(settings, grid)]
    assert [(f["kind"], f["path"]) for f in findings] == [
        ("gridded cells", str(ingest.gridded_file(region, "gosat", DAMAGED_DAY))),
        ("gridded cells", str(gridded)), ("samples", str(sample))]
    assert all(f["action"].startswith("upgraded in place") for f in findings)
    assert [p.read_bytes() for p in (gridded, footprints, sample)] == originals
    assert not (settings.quarantine_dir / "state").exists()  # not damage: nothing set aside
    assert check_state(settings, grid) == []


def test_refit_re_fuses_only_the_days_on_another_fit_and_is_idempotent(store):
    from tasks.fusion.merge import GosatFit

    settings, grid = store
    region, era5 = settings.region_dir, settings.raw("era5")
    pristine = read_samples(region)
    fit = ingest.current_gosat_fit(region, grid)
    gosat = pristine["source"] == "gosat"
    assert gosat.any() and set(pristine.loc[gosat, "fit_id"]) == {fit.fit_id}
    assert set(pristine.loc[~gosat, "fit_id"]) == {""}
    assert fit.n_collocations >= 3  # the demo's GOSAT soundings do meet OCO

    # The store as an older fit left it: two days mapped with another line.
    older = GosatFit(1.5, 1.0, 4, float("nan"), float("nan"), "offset")
    stale = [START, END]
    for day in stale:
        ingest.sample_day(region, era5, grid, day, older)
    untouched = day_file(region, DAMAGED_DAY).stat().st_mtime_ns
    refit = ingest.refit_gosat_and_refuse(region, era5, grid)
    assert refit.fit.fit_id == fit.fit_id and refit.previous_fit_id == fit.fit_id
    assert refit.rewritten == stale and refit.resampled == [] and refit.unchanged == 1
    assert day_file(region, DAMAGED_DAY).stat().st_mtime_ns == untouched
    # Reusing the stored features gives exactly what sampling the day afresh gives.
    pd.testing.assert_frame_equal(read_samples(region), pristine)
    again = ingest.refit_gosat_and_refuse(region, era5, grid)
    assert again.rewritten == [] and again.fit.fit_id == fit.fit_id
