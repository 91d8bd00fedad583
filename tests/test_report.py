"""`xco2 report`: regional means by month, season and year, growth rates, mean maps, the flow."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tasks.archive import day_cog_path, write_day_cog
from tasks.gridding.geometry import Grid
from tasks.analysis.report import ReportArea, build_report, report_window, select_days
from tasks.analysis.report.figures import TRUE_COLUMN_MAP_PNG
from tasks.analysis.report.scan import INTERVAL_KIND, regional_mean, scan_archive
from tasks.analysis.report.tables import PAPER_TABLE6_ANNUAL_PPM, growth_rates
from tasks.analysis.report.window import season_of
from tasks.settings import Region

REGION = Region(name="testland", west=100.0, south=30.0, east=100.2, north=30.2)
GRID = Grid.for_region(REGION, 0.01)  # 20 x 20 cells
TAGS = {"units": "ppm", "model_name": "xco2-resnet-lstm", "model_version": "3", "source_mode": "local",
        "synthetic": "false"}

# Two years of a few days each: constant 400 ppm in 2021, 402.5 ppm in 2022.
YEAR1 = [date(2021, m, 15) for m in (1, 4, 7, 10, 12)]
YEAR2 = [date(2022, m, 15) for m in (1, 4, 7, 10, 12)]


def write_day(root: Path, day: date, values, tags: dict | None = None, uncertainty=None) -> Path:
    xco2 = np.broadcast_to(np.asarray(values, dtype=np.float32), GRID.shape).copy()
    return write_day_cog(day_cog_path(root, REGION.name, day), xco2, GRID, {**TAGS, **(tags or {})}, uncertainty)


@pytest.fixture
def two_year_archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    for day in YEAR1:
        write_day(root, day, 400.0)
    for day in YEAR2:
        # A band 2 (uncertainty) on some days: only band 1 may be read.
        write_day(root, day, 402.5, tags={"model_version": "4"},
                  uncertainty=np.full(GRID.shape, 50.0, np.float32) if day.month == 4 else None)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_december_belongs_to_the_following_winter():
    assert season_of(date(2021, 12, 1)) == (2022, "DJF")
    assert season_of(date(2022, 1, 31)) == (2022, "DJF")
    assert season_of(date(2022, 2, 28)) == (2022, "DJF")
    assert season_of(date(2022, 3, 1)) == (2022, "MAM")
    assert season_of(date(2022, 11, 30)) == (2022, "SON")


def test_two_years_give_growth_seasons_and_maps(two_year_archive, tmp_path):
    out = tmp_path / "report"
    result = build_report(two_year_archive, REGION.name, GRID, "2021-01-01", "2022-12-31", out)
    tables = result["tables"]

    annual = {r["year"]: r for r in tables["annual"]}
    assert annual[2021]["mean_ppm"] == pytest.approx(400.0) and annual[2021]["n_days"] == 5
    assert annual[2022]["mean_ppm"] == pytest.approx(402.5) and annual[2022]["partial"] is True
    assert annual[2021]["day_coverage"] == pytest.approx(5 / 365, abs=1e-3)
    growth = tables["growth"]
    assert growth["year_over_year"][0]["growth_ppm_per_yr"] == pytest.approx(2.5)
    assert growth["linear_trend"]["slope_ppm_per_yr"] == pytest.approx(2.5)
    assert growth["linear_trend"]["stderr_ppm_per_yr"] is None  # needs 3 years

    seasons = {r["label"]: r for r in tables["seasonal"]}
    # December 2021 (400) sits in the winter of 2022 with January 2022 (402.5).
    assert seasons["DJF 2022"]["n_days"] == 2 and seasons["DJF 2022"]["mean_ppm"] == pytest.approx(401.25)
    assert seasons["DJF 2021"]["n_days"] == 1 and seasons["DJF 2021"]["mean_ppm"] == pytest.approx(400.0)
    assert seasons["DJF 2023"]["mean_ppm"] == pytest.approx(402.5)
    assert seasons["DJF 2022"]["period_days"] == 31 + 31 + 28
    assert [r["month"] for r in tables["monthly"]][:2] == ["2021-01", "2021-04"]
    clim = {r["season"]: r for r in tables["seasonal_climatology"]}
    assert clim["DJF"]["n_days"] == 4 and clim["DJF"]["n_seasons"] == 3

    files = {p.name for p in out.iterdir()}
    assert {"annual_2021.png", "annual_2022.png", "season_DJF.png", "season_MAM.png", "season_JJA.png",
            "season_SON.png", "timeseries.png", "seasonal_cycle.png", "summary.md", "report.json",
            "annual_means.csv", "seasonal_means.csv", "monthly_means.csv", "growth_rates.csv",
            "daily_means.csv"} <= files
    assert not [name for name in files if name.startswith(".")]  # no temp files left behind
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in files if name.endswith(".png"))

    rows = read_csv(out / "annual_means.csv")
    assert [(r["year"], float(r["mean_ppm"])) for r in rows] == [("2021", 400.0), ("2022", 402.5)]
    growth_rows = read_csv(out / "growth_rates.csv")
    assert float(growth_rows[0]["growth_ppm_per_yr"]) == pytest.approx(2.5)

    md = (out / "summary.md").read_text()
    assert "DEMO OUTPUT" not in md
    assert "December counted in the following year's winter" in md
    assert "(annual_2021.png)" in md and "(timeseries.png)" in md
    assert "| xco2-resnet-lstm | 3 | 5 |" in md and "| xco2-resnet-lstm | 4 | 5 |" in md
    assert "2.50" in md
    maps = {m["label"]: m for m in result["maps"]}
    assert maps["2022"]["mean_ppm"] == pytest.approx(402.5) and maps["DJF"]["n_days"] == 4

    # A rerun into the same folder drops the maps of years and seasons no longer reported.
    build_report(two_year_archive, REGION.name, GRID, "2022-01-01", "2022-06-30", out)
    names = {p.name for p in out.iterdir()}
    assert "annual_2022.png" in names and "annual_2021.png" not in names and "season_JJA.png" not in names


def test_growth_rates_of_three_years_have_a_standard_error():
    annual = [{"year": 2019, "mean_ppm": 400.0}, {"year": 2020, "mean_ppm": 402.0},
              {"year": 2022, "mean_ppm": 407.0}]  # 2021 missing: the step is divided by the gap
    growth = growth_rates(annual)
    assert [g["growth_ppm_per_yr"] for g in growth["year_over_year"]] == [2.0, 2.5]
    trend = growth["linear_trend"]
    slope, intercept = np.polyfit([2019, 2020, 2022], [400.0, 402.0, 407.0], 1)
    assert trend["slope_ppm_per_yr"] == pytest.approx(slope, abs=1e-3)
    assert trend["stderr_ppm_per_yr"] is not None and trend["stderr_ppm_per_yr"] > 0
    assert trend["mean_growth_ppm_per_yr"] == pytest.approx(7.0 / 3, abs=1e-3)


def test_regional_mean_is_area_weighted_and_skips_nan():
    tall = Grid(west=100.0, south=0.0, east=102.0, north=60.0, step=1.0)  # 60 rows x 2 columns
    xco2 = np.where(tall.lats[:, None] > 30, 410.0, 400.0) * np.ones(tall.shape)
    w = np.cos(np.radians(tall.lats))
    expected = (410 * w[tall.lats > 30].sum() + 400 * w[tall.lats < 30].sum()) / w.sum()
    mean, n, coverage = regional_mean(xco2, tall)
    assert mean == pytest.approx(expected) and n == 120 and coverage == pytest.approx(1.0)
    assert mean < 405.0  # the northern (smaller) cells count less than in a plain mean

    xco2[:30, 0] = np.nan  # the northern half of one column has no estimate
    mean, n, coverage = regional_mean(xco2, tall)
    expected = (410 * w[tall.lats > 30].sum() + 400 * 2 * w[tall.lats < 30].sum()) / (w.sum() + w[tall.lats < 30].sum())
    assert mean == pytest.approx(expected) and n == 90
    assert coverage == pytest.approx(1 - w[tall.lats > 30].sum() / (2 * w.sum()))
    assert regional_mean(np.full(tall.shape, np.nan), tall) == (None, 0, 0.0)


def test_mean_maps_accumulate_cell_by_cell_with_nan(tmp_path):
    root = tmp_path / "archive"
    a = np.full(GRID.shape, 400.0, np.float32)
    b = np.full(GRID.shape, 404.0, np.float32)
    a[0, :5] = np.nan  # cells missing on the first day only
    b[1, :] = np.nan  # a row missing on the second day only
    write_day(root, date(2020, 6, 1), a)
    write_day(root, date(2020, 6, 2), b)
    write_day(root, date(2020, 6, 3), np.nan)  # an empty day: no regional mean, no map weight
    maps = {}
    daily = scan_archive(root, REGION.name, GRID, [date(2020, 6, d) for d in (1, 2, 3)],
                         on_map=lambda acc: maps.setdefault((acc.kind, acc.label), (acc.mean(), acc.n_days)))
    assert daily[2].mean_ppm is None and daily[2].coverage == 0
    assert daily[0].coverage < 1 and daily[0].mean_ppm == pytest.approx(400.0)
    annual, n_days = maps[("annual", "2020")]
    assert n_days == 2 and set(maps) == {("annual", "2020"), ("season", "JJA")}
    expected = np.nanmean(np.stack([a, b]), axis=0)
    np.testing.assert_allclose(annual, expected, rtol=0, atol=1e-4)
    assert annual[0, 0] == pytest.approx(404.0) and annual[1, 0] == pytest.approx(400.0)
    assert annual[5, 5] == pytest.approx(402.0)


def test_a_boundary_narrows_means_maps_and_coverage_to_its_cells(tmp_path):
    """West half 400 ppm, east half 410: the box averages 405, a boundary over the west half 400."""
    root = tmp_path / "archive"
    values = np.full(GRID.shape, 400.0, np.float32)
    values[:, 10:] = 410.0
    values[0, 0] = np.nan  # one cell without a value inside the boundary
    for day in (date(2021, 3, 1), date(2021, 3, 2)):
        write_day(root, day, values)
    west_half = tmp_path / "west.geojson"  # reaches past the box; its east edge is between cells
    west_half.write_text('{"type": "Polygon", "coordinates": '
                         '[[[99.9, 29.9], [100.1, 29.9], [100.1, 30.3], [99.9, 30.3], [99.9, 29.9]]]}')
    area = ReportArea.for_region(Region(**{**REGION.model_dump(), "boundary": str(west_half)}), GRID)
    assert area.inside.sum() == 200 and area.inside[:, :10].all()

    box = build_report(root, REGION.name, GRID, "2021-01-01", "2021-12-31", tmp_path / "box")
    province = build_report(root, REGION.name, GRID, "2021-01-01", "2021-12-31", tmp_path / "province", area)
    box_day, province_day = box["tables"]["daily"][0], province["tables"]["daily"][0]
    assert box_day["mean_ppm"] == pytest.approx(405.0, abs=0.05) and box_day["valid_cells"] == 399
    assert province_day["mean_ppm"] == pytest.approx(400.0) and province_day["valid_cells"] == 199
    assert province_day["coverage"] == pytest.approx(199 / 200, abs=1e-3)  # of the boundary's area, not the box's
    assert province["maps"][0]["mean_ppm"] == pytest.approx(400.0)
    assert province["context"]["area"]["cells"] == 200 and province["context"]["area"]["box_cells"] == 400
    assert box["context"]["area"]["boundary"] is None
    annual = province["tables"]["annual"][0]
    assert annual["paper_ppm"] == PAPER_TABLE6_ANNUAL_PPM[2021]
    assert annual["minus_paper_ppm"] == pytest.approx(400.0 - PAPER_TABLE6_ANNUAL_PPM[2021], abs=1e-3)
    summary = Path(province["summary"]).read_text()
    assert f"the 200 cells inside the boundary `{west_half}`" in summary
    assert "2.21 ppm/yr" in summary and "Table 6" in summary
    assert read_csv(Path(province["csv"]["annual"]))[0]["paper_ppm"] == "414.57"


def test_a_short_synthetic_window_still_reports_and_says_what_needs_more_data(tmp_path):
    root = tmp_path / "archive"
    for d in (1, 2, 3):
        write_day(root, date(2020, 6, d), 410.0 + d, tags={"synthetic": "true", "model_version": "1"})
    write_day(root, date(2020, 6, 4), np.nan, tags={"synthetic": "true", "model_version": "1"})
    result = build_report(root, REGION.name, GRID, "2020-05-01", "2020-07-10", tmp_path / "out")
    tables = result["tables"]
    assert tables["annual"][0]["mean_ppm"] == pytest.approx(412.0)
    assert tables["growth"]["linear_trend"] is None and tables["growth"]["year_over_year"] == []
    notes = " ".join(tables["needs_more_data"])
    assert "at least 2 calendar years" in notes and "all 12 calendar months" in notes
    assert "all four seasons" in notes and "2020-06-04" in notes
    md = Path(result["summary"]).read_text()
    assert "DEMO OUTPUT: SYNTHETIC DATA" in md and "4 of the 4 archived days" in md
    assert "## Needs more data" in md and "Needs at least 2 calendar years" in md
    assert "| xco2-resnet-lstm | 1 | 4 |" in md
    assert read_csv(Path(result["csv"]["growth"])) == []
    assert (tmp_path / "out" / "season_JJA.png").is_file() and (tmp_path / "out" / "annual_2020.png").is_file()


def test_clear_errors_for_bad_windows(tmp_path, two_year_archive):
    with pytest.raises(ValueError, match="start 2022-02-01 is after end 2022-01-01"):
        report_window("2022-02-01", "2022-01-01")
    with pytest.raises(ValueError, match="end '2022-13-01' is not a date"):
        report_window("2022-01-01", "2022-13-01")
    with pytest.raises(ValueError) as err:
        select_days(two_year_archive, REGION.name, date(2023, 1, 1), date(2023, 3, 1))
    message = str(err.value)
    assert "2023-01-01" in message and "2023-03-01" in message and "testland" in message
    assert str(two_year_archive) in message
    with pytest.raises(ValueError, match="no archived days"):
        build_report(tmp_path / "empty", REGION.name, GRID, "2021-01-01", "2021-12-31", tmp_path / "out")


def test_a_grid_other_than_the_archived_one_is_named(two_year_archive, tmp_path):
    other = Grid(west=100.0, south=30.0, east=100.3, north=30.2, step=0.01)
    with pytest.raises(ValueError, match="configured region's grid"):
        scan_archive(two_year_archive, REGION.name, other, YEAR1[:1])


def test_cli_rejects_bad_dates_and_empty_windows(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    assert main(["report", "--start", "2021-02-30", "--end", "2021-03-01"]) == 2
    assert "start '2021-02-30' is not a date" in capsys.readouterr().err
    assert main(["report", "--start", "2021-03-02", "--end", "2021-03-01"]) == 2
    assert "after end" in capsys.readouterr().err
    assert main(["report", "--start", "2021-03-01", "--end", "2021-03-31"]) == 2
    assert "no archived days between 2021-03-01 and 2021-03-31 for region 'sichuan'" in capsys.readouterr().err


def _read_artifacts(keys: list[str]) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a for a in found}


def test_flow_writes_files_and_publishes_artifacts(prefect_harness, two_year_archive, tmp_path, monkeypatch, capsys):
    from flows.cli import main
    from flows.report import archive_report

    data = tmp_path / "data"
    overrides = {"archive_dir": str(two_year_archive), "data_dir": str(data), "region": REGION.model_dump()}
    result = archive_report("2021-10-01", "2022-01-31", overrides=overrides)  # Oct + Dec 2021, Jan 2022
    out = data / "reports" / "testland" / "2021-10-01_2022-01-31"
    assert Path(result["out_dir"]) == out and result["n_days"] == 3
    assert (out / "summary.md").is_file() and (out / "annual_2022.png").is_file() and (out / "season_DJF.png").is_file()
    assert (out / "timeseries.png").is_file() and (out / "seasonal_means.csv").is_file()
    # Format-1 days only: no true-column map, and the days without the band are counted.
    assert result["true_column_interval"] == {"mean_ppm": None, "n_days": 0, "days_without_band": 3}

    keys = ["report-monthly-means", "report-seasonal-means", "report-annual-means", "report-summary"]
    artifacts = _read_artifacts(keys)
    assert set(artifacts) == set(keys)
    assert artifacts["report-summary"].type == "markdown"
    assert "annual_2022.png" in artifacts["report-summary"].data and "2.50" in artifacts["report-summary"].data
    assert artifacts["report-annual-means"].type == "table" and "402.5" in str(artifacts["report-annual-means"].data)

    # The same through the command line, configured by environment, into --out.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XCO2_ARCHIVE_DIR", str(two_year_archive))
    monkeypatch.setenv("XCO2_DATA_DIR", str(data))
    for key, value in REGION.model_dump().items():
        monkeypatch.setenv(f"XCO2_REGION__{key.upper()}", str(value))
    assert main(["report", "--start", "2022-01-01", "--end", "2022-01-31", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli" / "summary.md") in printed and "needs more data" in printed
    assert "1 day(s) archived without the true column's interval band: skipped for it" in printed
    assert (tmp_path / "cli" / "annual_2022.png").is_file()


def _write_day_with_true_column(root: Path, day: date, xco2: float, half_width: np.ndarray) -> Path:
    """A day of archive format 2: band 3 the true column's half-width."""
    return write_day_cog(day_cog_path(root, REGION.name, day), np.full(GRID.shape, xco2, np.float32), GRID, TAGS,
                         np.full(GRID.shape, 9.0, np.float32), true_column_uncertainty=half_width)


def test_the_true_column_interval_is_mapped_and_days_without_it_are_counted(tmp_path):

    root = tmp_path / "archive"
    first = np.full(GRID.shape, 1.0, np.float32)
    first[0, 0] = np.nan  # a cell without an interval that day
    _write_day_with_true_column(root, date(2022, 3, 1), 400.0, first)
    _write_day_with_true_column(root, date(2022, 3, 2), 401.0, np.full(GRID.shape, 2.0, np.float32))
    write_day(root, date(2022, 3, 3), 402.0, uncertainty=np.full(GRID.shape, 9.0, np.float32))  # the old layout
    result = build_report(root, REGION.name, GRID, "2022-03-01", "2022-03-31", tmp_path / "report")
    interval = result["tables"]["true_column_interval"]
    assert interval == {"mean_ppm": pytest.approx(1.5), "n_days": 2, "days_without_band": 1}
    daily = {r["day"]: r for r in result["tables"]["daily"]}
    assert daily["2022-03-02"]["true_column_interval_ppm"] == pytest.approx(2.0)
    assert daily["2022-03-03"]["true_column_interval_ppm"] is None
    (mapped,) = [m for m in result["maps"] if m["kind"] == INTERVAL_KIND]
    assert mapped["n_days"] == 2 and mapped["mean_ppm"] == pytest.approx(1.5, abs=0.01)
    assert Path(mapped["path"]).name == TRUE_COLUMN_MAP_PNG and Path(mapped["path"]).is_file()
    md = Path(result["summary"]).read_text()
    assert "Mean 68 % half-width of the true XCO2 column over the area: **1.50 ppm** (2 days" in md
    assert "1 day(s) archived without that band" in md and f"]({TRUE_COLUMN_MAP_PNG})" in md
    # The XCO2 means are untouched by the extra band.
    assert result["tables"]["monthly"][0]["mean_ppm"] == pytest.approx(401.0)


def test_an_archive_without_the_true_column_band_has_no_interval_map(two_year_archive, tmp_path):
    result = build_report(two_year_archive, REGION.name, GRID, "2022-01-01", "2022-12-31", tmp_path / "r")
    assert result["tables"]["true_column_interval"] == {"mean_ppm": None, "n_days": 0, "days_without_band": 5}
    assert all(m["kind"] != "true_column_interval" for m in result["maps"])
    assert "No archived day of the window has the true column's interval band." in Path(result["summary"]).read_text()
