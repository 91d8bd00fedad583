"""The real-value benchmark (issue 11 item 1): split, inputs in the real formats, baselines, scores."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import benchmark_real as br
from tasks.analysis.real_benchmark_io import ARCHIVE_BANDS
from tasks.analysis import real_benchmark as rb
from models import retrieval_noise as rn

BOX = br.BenchmarkBox("tiny", -60.0, -10.0, -58.0, -8.0, date(2016, 3, 1), date(2016, 3, 12))
SPLIT = rb.SplitConfig(block_deg=0.5, block_fraction=0.2, day_every=4, day_offset=1, seed=7)


def tiny_table(seed: int = 0, coverage: float = 0.9) -> pd.DataFrame:
    """Bins of 0.25 degree (centres on the 0.25 grid's cell centres) over the tiny box, most of
    them observed every day: a smooth gradient, a slow trend and 0.4 ppm of noise."""
    rng = np.random.default_rng(seed)
    centres = np.arange(0.125, 2.0, 0.25)
    lon, lat = np.meshgrid(BOX.west + centres, BOX.south + centres)
    rows = []
    for i in range((BOX.end - BOX.start).days + 1):
        day = BOX.start + timedelta(days=i)
        keep = rng.random(lon.size) < coverage
        x = 400.0 + 0.3 * (lat.ravel() - BOX.south) + 0.02 * i + rng.normal(0, 0.4, lon.size)
        rows.append(pd.DataFrame({"day": day, "lon": lon.ravel()[keep], "lat": lat.ravel()[keep],
                                  "xco2_ppm": x[keep]}))
    return pd.concat(rows, ignore_index=True)


def test_split_holds_out_whole_blocks_and_whole_days():
    df = tiny_table()
    label = rb.split_holdouts(df, BOX.bounds, BOX.start, BOX.end, SPLIT)
    assert set(label) == {"train", "spatial", "days"}
    days_out = set(rb.held_out_days(BOX.start, BOX.end, SPLIT))
    assert days_out == {date(2016, 3, 2), date(2016, 3, 6), date(2016, 3, 10)}
    assert set(df["day"][label == "days"]) == days_out
    assert not set(df["day"][label != "days"]) & days_out  # a held-out day is out whole
    blocks = rb.block_ids(df["lon"], df["lat"], BOX.west, BOX.south, SPLIT.block_deg)
    held_blocks = set(blocks[label == "spatial"])
    assert len(held_blocks) == 3  # 20% of 16 blocks
    assert not held_blocks & set(blocks[label == "train"])  # a held-out block is out whole
    again = rb.split_holdouts(df, BOX.bounds, BOX.start, BOX.end, SPLIT)
    assert (again == label).all()  # seeded


def test_outliers_are_dropped_the_way_inputs_are():
    df = tiny_table()
    df.loc[0, "xco2_ppm"] = 332.4  # inside the readers' range, a failed retrieval all the same
    df.loc[1, "xco2_ppm"] = 520.0  # outside it
    kept, counts = br.select_box(df, BOX)
    assert counts["outside_plausible_range"] == 1 and counts["robust_outliers"] == 1
    assert len(kept) == len(df) - 2 and kept["xco2_ppm"].between(395, 405).all()


def test_lite_files_round_trip_through_the_reader(tmp_path):
    from tasks.readers import read_soundings
    from tasks.gridding.soundings import good_soundings

    df = tiny_table()
    train = df[df["day"] <= date(2016, 3, 3)]
    paths = br.write_lite_files(train, tmp_path)
    assert len(paths) == 3 and all(p.name.startswith("oco2_LtCO2_1603") for p in paths)
    for path in paths:
        got = good_soundings(read_soundings(path))
        day = got["time"].dt.date.unique()
        assert len(day) == 1
        want = train[train["day"] == day[0]].sort_values(["lat", "lon"]).reset_index(drop=True)
        got = got.sort_values(["latitude", "longitude"]).reset_index(drop=True)
        assert len(got) == len(want)
        np.testing.assert_allclose(got["latitude"], want["lat"], atol=1e-5)
        np.testing.assert_allclose(got["longitude"], want["lon"], atol=1e-5)
        np.testing.assert_allclose(got["xco2"], want["xco2_ppm"], atol=1e-4)  # float32 in the file
        assert (got["xco2_uncertainty"] == br.SOUNDING_UNCERTAINTY_PPM).all()


def test_baselines_recover_a_known_harmonic_signal():
    origin = date(2015, 1, 1)
    days = pd.date_range(origin, periods=730, freq="D")
    t = np.arange(730) / rb.YEAR_DAYS
    truth = np.array([398.0, 2.4, 1.2, -0.8, 0.3, 0.2])
    signal = rb.harmonic_design(t) @ truth
    df = pd.DataFrame({"day": days.date, "lon": 0.0, "lat": 0.0, "xco2_ppm": signal})
    fit = rb.HarmonicFit(origin).fit(df)
    np.testing.assert_allclose(fit.coef_, truth, atol=1e-8)
    # A daily anomaly on top: the anomaly model takes it on training days and interpolates between.
    anomaly = np.where(np.arange(730) % 2 == 0, 0.5, 0.7)
    df["xco2_ppm"] = signal + anomaly
    held = df.iloc[1::10]  # odd days: anomaly 0.7, neighbours (even days) at 0.5 -> 0.5 interpolated
    train = df.drop(held.index)
    model = rb.HarmonicDailyAnomaly(origin).fit(train)
    seen = train.iloc[::7]
    assert np.abs(model.predict(seen) - seen["xco2_ppm"]).max() < 0.02
    # The held-out days' anomaly is their neighbours' (0.5 ppm), up to the harmonic fit's bit of it.
    assert np.abs(model.predict(held) - (rb.harmonic_design(t[held.index]) @ truth + 0.5)).max() < 0.05
    assert rb.TrainingMean().fit(train).predict(held)[0] == pytest.approx(train["xco2_ppm"].mean())


def test_scores_and_noise_floor():
    s = rb.score(np.array([1.0, 2.0, 3.0, np.nan]), np.array([1.5, 2.0, 2.5, 9.0]), np.array([0.6, 0.1, 0.4, 1]))
    assert s["n"] == 3 and s["bias"] == pytest.approx(0.0) and s["rmse"] == pytest.approx(np.sqrt(0.5 / 3))
    assert s["coverage68"] == pytest.approx(2 / 3) and s["r2"] == pytest.approx(1 - 0.5 / 2)
    assert "coverage68_low" not in s  # no days given: no range


def test_coverage_range_resamples_whole_days():
    """Days whose cells are all inside or all outside: the range spans what drawing days gives;
    one cell per day would leave the same coverage far less uncertain."""
    n_days, per_day = 20, 30
    days = np.repeat(np.arange(n_days), per_day)
    day_inside = np.arange(n_days) < 13  # 65 % of days
    inside = day_inside[days]
    s = rb.score(np.zeros(len(days)), np.where(inside, 0.5, 2.0), np.ones(len(days)), days)
    assert s["coverage68"] == pytest.approx(0.65)
    assert s["coverage68_low"] <= 0.5 and s["coverage68_high"] >= 0.8  # sd ~0.11 with 20 days
    assert s["coverage68_low"] < s["coverage68"] < s["coverage68_high"]
    spread = np.arange(len(days))  # every cell its own day
    narrow = rb.score(np.zeros(len(days)), np.where(inside, 0.5, 2.0), np.ones(len(days)), spread)
    assert narrow["coverage68_high"] - narrow["coverage68_low"] < 0.1
    table = rb.markdown_table({"box": {"xco2 archive": {"spatial": s, "days": s}}})
    assert f"65% ({s['coverage68_low']:.0%}-{s['coverage68_high']:.0%})" in table
    rng = np.random.default_rng(3)
    df = tiny_table(coverage=1.0)
    df["xco2_ppm"] = 400 + rng.normal(0, 0.8, len(df))
    floor = rn.noise_floor(df)
    assert floor["pairs"] == 12 * 2 * 8 * 7  # every day, 2 x 8 x 7 edge neighbours on the 8 x 8 bins
    assert floor["rmse"] == pytest.approx(0.8, rel=0.08)


def test_scoring_reads_the_cog_cell_holding_the_bin_centre(tmp_path):
    from affine import Affine
    import rasterio

    # 4 x 3 cells of 0.25 degree, band 1 = 400 + 10 * row + col, band 2 = 0.1 * (1 + col).
    transform = Affine(0.25, 0, -60.0, 0, -0.25, -9.25)
    rows, cols = np.mgrid[0:3, 0:4]
    bands = np.stack([400 + 10 * rows + cols, 0.1 * (1 + cols)]).astype(np.float32)
    bands[0, 2, 3] = -9999.0
    path = tmp_path / "day.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=2, dtype="float32", crs="EPSG:4326",
                       transform=transform, nodata=-9999.0) as dst:
        dst.write(bands)
    lon = np.array([-59.875, -59.375, -59.625, -59.125, -61.0])
    lat = np.array([-9.375, -9.625, -9.875, -9.875, -9.5])
    x, h = rb.read_cog_at(path, lon, lat)
    np.testing.assert_allclose(x[:3], [400, 412, 421])  # (row, col) (0, 0), (1, 2), (2, 1)
    assert np.isnan(x[3]) and np.isnan(x[4])  # (2, 3) is nodata; the last point lies outside
    np.testing.assert_allclose(h[:3], [0.1, 0.3, 0.2])
    rows_df = pd.DataFrame({"day": [date(2016, 3, 1), date(2016, 3, 2)], "lon": lon[:2], "lat": lat[:2]})
    ax, _ = rb.archive_at(rows_df, lambda d: path if d == date(2016, 3, 1) else tmp_path / "none.tif")
    assert ax[0] == 400 and np.isnan(ax[1])  # a day not archived scores nothing


def test_goal_verdict_names_the_baseline_that_wins():
    s = {"rmse": 1.0, "r2": 0.5, "bias": 0.0, "n": 10, "coverage68": 0.68}
    table = {"xco2 archive": {"spatial": s, "days": {**s, "coverage68": 0.5}},
             "harmonic trend + season": {"spatial": {**s, "rmse": 0.94}, "days": {**s, "rmse": 0.97}},
             "noise floor": {"spatial": {**s, "rmse": 0.2}, "days": {**s, "rmse": 0.2}}}
    v = rb.goal_verdict(table)
    assert not v["no_baseline_better"] and v["beaten_by"] == ["harmonic trend + season on spatial blocks (0.94 < 1.00)"]
    assert not v["coverage_ok"] and v["coverage_outside"] == ["whole days 50%"]
    assert "| tiny 2016-03..2016-03 | xco2 archive | 1.00 |" in rb.markdown_table({BOX.label: table})


def test_a_missing_table_is_named(tmp_path):
    with pytest.raises(br.BenchmarkInputError, match="no such table"):
        br.read_retrievals(tmp_path / "absent.parquet")
    with pytest.raises(br.BenchmarkInputError, match="NAME:WEST"):
        br.parse_box("nowhere")
    assert br.parse_box("x:-1,-2,3,4:2016-01-01:2016-02-01").east == 3.0


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, prefect_harness):
    table = tiny_table()
    path = tmp_path / "retrievals.parquet"
    table.to_parquet(path)
    opts = br.BenchmarkOptions(table=path, out_root=tmp_path / "bench", grid_step=0.25, split=SPLIT, max_epochs=2,
                               max_training_samples=1000, max_validation_samples=200)
    result = br.run_benchmark(opts, BOX)
    counts = result["counts"]
    assert counts["train"] + counts["held_spatial"] + counts["held_days"] == len(table)
    assert result["system"]["samples"] == counts["train"]  # one sample per training bin, nothing else
    assert result["system"]["quarantined"] == 0
    # Held-out rows never reached the inputs: the Lite files hold exactly the training rows.
    from tasks.readers import read_soundings

    run_dir = Path(result["run_dir"])  # beside it: the tracking DB and its mlartifacts/
    assert run_dir.parent == tmp_path / "bench"
    written = pd.concat([read_soundings(p) for p in sorted((run_dir / "inputs" / "remote" / "oco2").glob("*.nc4"))])
    assert len(written) == counts["train"]
    held_days = set(rb.held_out_days(BOX.start, BOX.end, SPLIT))
    assert not set(written["time"].dt.date) & held_days
    arch = result["table"]["xco2 archive"]
    for h in rb.HOLDOUTS:
        assert arch[h]["n"] == counts[f"held_{h}"]  # every held-out cell-day was mapped and scored
        assert np.isfinite(arch[h]["rmse"]) and arch[h]["rmse"] < 5
    assert {"training mean", "harmonic trend + season", "harmonic + daily anomaly", "noise floor"} <= set(result["table"])
    assert (run_dir / "table.md").is_file() and (run_dir / "benchmark.png").is_file()
    assert (run_dir / "result.json").is_file() and result["mlflow_run_id"]


def test_the_command_skips_without_the_table(tmp_path, capsys):
    from flows.cli import main

    assert main(["benchmark", "real", "--table", str(tmp_path / "absent.parquet")]) == 0
    assert "SKIPPED" in capsys.readouterr().out
    assert main(["benchmark", "real", "--table", str(tmp_path / "absent.parquet"), "--box", "nowhere"]) == 0
    table = tiny_table()
    table.to_parquet(tmp_path / "t.parquet")
    assert main(["benchmark", "real", "--table", str(tmp_path / "t.parquet"), "--box", "nowhere"]) == 2
    assert "NAME:WEST,SOUTH,EAST,NORTH" in capsys.readouterr().err


def synthetic_tracks(n_days: int, independent_sd: float, track_sd: float = 0.0, outliers: float = 0.0,
                     seed: int = 0) -> pd.DataFrame:
    """One north-bound track a day, bins 0.2496 degree apart (the development set's spacing):
    a day's level, a gentle along-track gradient, a track-correlated error of sd `track_sd`
    varying over ~10 bins (AR(1)), independent noise of sd `independent_sd` and a fraction
    `outliers` of retrievals 8 ppm off."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_days):
        lat = -30.0 + 0.2496 * np.arange(40)
        lon = -60.0 + 0.05 * np.arange(40) + rng.uniform(-3, 3)
        rho = np.exp(-1 / 10)
        corr = np.empty(40)
        corr[0] = rng.normal(0, track_sd)
        for i in range(1, 40):
            corr[i] = rho * corr[i - 1] + np.sqrt(1 - rho ** 2) * rng.normal(0, track_sd)
        x = 400 + rng.normal(0, 2) + 0.01 * (lat - lat[0]) + corr + rng.normal(0, independent_sd, 40)
        x += np.where(rng.random(40) < outliers, 8.0, 0.0)
        frames.append(pd.DataFrame({"day": date(2016, 1, 1) + timedelta(days=k), "lon": lon, "lat": lat,
                                    "xco2_ppm": x}))
    return pd.concat(frames, ignore_index=True)


def test_neighbour_pairs_recover_a_known_noise_variance():
    df = synthetic_tracks(150, independent_sd=1.2)
    est = rn.neighbour_noise_variance(df, draws=200)
    assert est["pairs"] == 150 * 39 and est["days"] == 150
    assert est["variance"] == pytest.approx(1.44, rel=0.1) and est["level"] == rn.NEIGHBOUR_LEVEL
    assert est["variance_median"] == pytest.approx(1.44, rel=0.1)  # Gaussian: every level agrees
    assert est["variance_mean_square"] == pytest.approx(1.44, rel=0.1)
    assert est["low"] < est["variance"] < est["high"]
    # Robust: 3 % of retrievals 8 ppm off (6 % of the pairs) move it by a fifth, the mean square doubles.
    noisy = rn.neighbour_noise_variance(synthetic_tracks(150, independent_sd=1.2, outliers=0.03), draws=0)
    assert noisy["variance"] < 1.3 * 1.44
    assert noisy["variance_mean_square"] > 2 * 1.44


def test_neighbour_pairs_miss_the_noise_shared_along_a_track():
    """A track-correlated error (sd 1, ~10 bins long) adds 1 ppm2 to every retrieval's noise, yet
    neighbours share 90 % of it: the pairs see the independent part and only a tenth of the rest."""
    est = rn.neighbour_noise_variance(synthetic_tracks(80, independent_sd=1.0, track_sd=1.0), draws=0)
    assert 1.0 < est["variance"] < 1.3  # not the 2.0 ppm2 of the whole noise


def test_noise_consistency_compares_the_intervals_noise_with_the_pairs():
    df = synthetic_tracks(60, independent_sd=1.0)
    n = 50
    retrieval = np.full(n, np.sqrt(0.8 + 1.0))  # field variance 0.8 + noise 1.0
    true_column = np.full(n, np.sqrt(0.8))
    archive = {"spatial": (np.zeros(n), retrieval, true_column), "days": (np.zeros(n), retrieval, true_column)}
    c = rn.noise_consistency(archive, df)
    assert c["implied"]["variance"] == pytest.approx(1.0) and c["implied"]["n"] == 2 * n
    assert c["ratio"] == pytest.approx(1.0, rel=0.15) and c["within"]
    doubled = {h: (a[0], np.sqrt(0.8 + 2.0) * np.ones(n), a[2]) for h, a in archive.items()}
    assert not rn.noise_consistency(doubled, df)["within"]
    old_layout = {h: (a[0], a[1], np.full(n, np.nan)) for h, a in archive.items()}
    c_old = rn.noise_consistency(old_layout, df)
    assert c_old["implied"]["n"] == 0 and not c_old["within"]
    table = rb.noise_markdown({"box A": c, "box B": c_old})
    assert "| box A | 1.000 | 100 |" in table and "| YES |" in table
    assert "no true-column band" in table


def test_the_archive_bands_are_read_by_description(tmp_path):
    from affine import Affine
    import rasterio

    transform = Affine(0.25, 0, -60.0, 0, -0.25, -9.25)
    path = tmp_path / "day.tif"
    bands = np.stack([np.full((2, 2), 400.0), np.full((2, 2), 1.5), np.full((2, 2), 0.9)]).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=3, dtype="float32", crs="EPSG:4326",
                       transform=transform, nodata=float("nan")) as dst:
        dst.write(bands)
        for k, name in enumerate(ARCHIVE_BANDS, start=1):
            dst.set_band_description(k, name)
    old = tmp_path / "old.tif"
    with rasterio.open(old, "w", driver="GTiff", width=2, height=2, count=2, dtype="float32", crs="EPSG:4326",
                       transform=transform, nodata=float("nan")) as dst:
        dst.write(bands[:2])
        for k, name in enumerate(ARCHIVE_BANDS[:2], start=1):
            dst.set_band_description(k, name)
    lon, lat = np.array([-59.9]), np.array([-9.3])
    x, r, t = rb.read_cog_at(path, lon, lat, ARCHIVE_BANDS)
    assert (x[0], r[0], t[0]) == (400.0, 1.5, pytest.approx(0.9))
    x, r, t = rb.read_cog_at(old, lon, lat, ARCHIVE_BANDS)
    assert x[0] == 400.0 and r[0] == 1.5 and np.isnan(t[0])  # a day archived before the band: NaN


def test_the_reliability_of_both_intervals_at_held_out_values(tmp_path):
    from tasks.analysis.real_benchmark_io import reliability_curves

    rng = np.random.default_rng(4)
    n = 5000
    held, archive = {}, {}
    for h in rb.HOLDOUTS:
        truth = 400 + rng.normal(0, 1, n)
        observed = truth + rng.normal(0, 1.2, n)  # retrieval noise variance 1.44
        mapped = truth + rng.normal(0, 0.8, n)  # the map misses the true column by 0.8 ppm sd
        held[h] = pd.DataFrame({"xco2_ppm": observed})
        archive[h] = (mapped, np.full(n, np.sqrt(0.64 + 1.44)), np.full(n, 0.8))
    curves = reliability_curves(held, archive, noise_variance=1.44)
    assert [c.name for c in curves] == ["retrieval interval, spatial blocks", "retrieval interval, whole days",
                                        "true column + neighbour noise, spatial blocks",
                                        "true column + neighbour noise, whole days"]
    for c in curves:
        assert c.n == n and c.observed == pytest.approx((0.5, 0.6827, 0.9, 0.95), abs=0.025)
    noise = rn.noise_consistency(archive, synthetic_tracks(60, independent_sd=1.2))
    md = br.box_markdown("box", {"xco2 archive": {}}, noise, curves, "reliability.png")
    assert "| retrieval interval, whole days |" in md and "![reliability](reliability.png)" in md
    assert "| box | 1.440 | 10000 |" in md


def test_the_benchmark_run_keeps_its_artifacts_beside_the_tracking_db(tmp_path, monkeypatch):
    """Logged from any directory, the run's files go under the data dir, never ./mlruns there."""
    from datetime import date

    from mlflow.tracking import MlflowClient

    from flows.benchmark_real import log_to_mlflow
    from tasks.analysis.real_benchmark_io import BenchmarkBox, BenchmarkOptions

    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    (tmp_path / "data").mkdir()
    table = tmp_path / "table.md"
    table.write_text("| method | rmse |\n")
    box = BenchmarkBox("amazon", -65, -10, -55, 0, date(2016, 1, 1), date(2016, 6, 30))
    run_id = log_to_mlflow(uri, box, BenchmarkOptions(),
                           {"table": {"map": {"blocks": {"rmse": 2.1, "n": 10}}}}, [table])
    assert not (elsewhere / "mlruns").exists()
    artifacts = MlflowClient(uri).get_run(run_id).info.artifact_uri
    assert artifacts.startswith((tmp_path / "data" / "mlartifacts").as_uri())
    assert (tmp_path / "data" / "mlartifacts").is_dir()
