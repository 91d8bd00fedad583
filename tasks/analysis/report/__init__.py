"""Analysis of the archive: the paper's results section (Table 6, Figures 8-10) for any window.

    first, last = report_window("2020-01-01", "2022-12-31")
    days = select_days(archive_root, region_name, first, last)        # ValueError when none
    daily, maps = scan_and_map(archive_root, region_name, grid, days, out_dir)
    tables = summarise(daily)
    written = write_outputs(out_dir, tables, maps, context)            # CSV, PNG, summary.md
    # or all at once: build_report(archive_root, region_name, grid, start, end, out_dir)

What is computed, and how:
- The area: the cells of the region's boundary polygon (a cell counts when its centre lies inside;
  tasks/regions/boundary.py), or the whole box when the region has none. Everything below (means,
  coverage, growth, maps) is over those cells only, so a Sichuan report is over the province
  (about 0.48 M km2), not its bounding box (1.40 M km2), and compares with the paper's Table 6
  (PAPER_TABLE6_ANNUAL_PPM, set beside the annual means).
- Daily regional mean: the mean of band 1 (XCO2, ppm) over the area's cells with a value (NaN is
  no data), each cell weighted by cos(latitude). A 0.01 degree cell's area shrinks with the cosine
  of its latitude; over Sichuan's 8.3 degrees (26-34 N) that is a 10 % difference between the
  southern and northern edges, so an unweighted mean would over-count the north. Coverage is
  the area fraction of the region with a value.
- Monthly, seasonal and annual means: the mean of the daily regional means of the archived days
  in the period (each day counts once, whatever its coverage), with the number of days, the
  period's calendar days and their ratio (`day_coverage`). A period covered below
  `PARTIAL_BELOW` of its days is marked partial: its mean leans towards the part of the
  seasonal cycle that was archived (about 5 ppm peak to trough in the paper).
- Seasons are DJF, MAM, JJA, SON. December counts in the FOLLOWING year's winter: "DJF 2021" is
  December 2020 + January and February 2021 (the usual climatological convention, so a winter is
  one unbroken season).
- Climatologies (the paper's Fig. 9 and Fig. 10): per calendar month and per season, the mean of
  the daily means of all such days in the window, whatever their year.
- Growth rates: year-over-year differences of the annual means (divided by the gap when a year
  is missing) and, with at least 2 years, the least-squares linear trend of the annual means in
  ppm/yr (its standard error needs at least 3 years).
- Mean maps: per-cell sums and counts accumulated day by day, never stacking days: one
  accumulator for the current year (written out as soon as the year ends) and one per season
  (all days of that season in the window, as in Fig. 9). For Sichuan (1585 x 827 cells) that is
  5 accumulators of about 16 MB, whatever the window's length.

- The true column's interval (issue 22): the mean over the window of each cell's 68 % half-width
  of the true XCO2 column (the band described `TRUE_COLUMN_BAND`), mapped beside the means; its
  regional mean per day in the daily table. Days archived before that band existed are skipped
  and counted (`true_column_interval.days_without_band`).

Band 1 (XCO2) is read by index; the true column's interval by its description, as it may or may
not exist; band 2, the retrieval's interval, is not read.
When the window is short (the demo archives a few days) everything still works, and the report
lists which statistics need more data (`needs_more_data`).

The steps live in sibling modules, one concern each: `window` (the days and the calendar), `scan`
(the pass over the archive), `tables` (the statistics), `figures` and `outputs` (the files). This
module is the facade the flow and the CLI call: the steps in order and `build_report`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from tasks.analysis.report.figures import TRUE_COLUMN_MAP_PNG, plot_mean_map
from tasks.analysis.report.outputs import write_outputs
from tasks.analysis.report.scan import (INTERVAL_KIND, DayStat, MapInfo, MeanAccumulator, ReportArea, regional_mean,
                                        rounded, scan_archive)
from tasks.analysis.report.tables import summarise
from tasks.analysis.report.window import SEASON_NAMES, report_window, select_days
from tasks.archive.layout import region_dir
from tasks.gridding.geometry import Grid

__all__ = ["DayStat", "MapInfo", "ReportArea", "build_report", "report_context", "report_window", "scan_and_map",
           "select_days", "summarise", "write_outputs"]


def scan_and_map(archive_root: Path | str, region_name: str, grid: Grid, days: list[date],
                 out_dir: Path | str, area: ReportArea | None = None) -> tuple[list[DayStat], list[MapInfo]]:
    """Scan the days once, writing each annual and season mean map to `out_dir` as it finishes.
    `area`: the cells averaged and mapped (default: the whole box)."""
    out_dir = Path(out_dir)
    area = area or ReportArea()
    maps: list[MapInfo] = []

    def write(acc: MeanAccumulator) -> None:
        if acc.kind == INTERVAL_KIND:
            path = plot_mean_map(acc, grid, out_dir / TRUE_COLUMN_MAP_PNG,
                                 f"Mean 68 % half-width of the true XCO2 column, {region_name}", area.outline,
                                 label="true column, 68 % half-width (ppm)", cmap="magma")
            mean, _, _ = regional_mean(acc.mean(), grid, area.inside)
            maps.append(MapInfo(kind=acc.kind, label=acc.label, path=str(path), n_days=acc.n_days,
                                first=str(acc.first), last=str(acc.last), mean_ppm=rounded(mean)))
            return
        if acc.kind == "annual":
            name, title = f"annual_{acc.label}.png", f"Mean XCO2 {acc.label}, {region_name}"
        else:
            name = f"season_{acc.label}.png"
            title = f"Mean XCO2 {acc.label} ({SEASON_NAMES[acc.label]}, all years in the window), {region_name}"
        path = plot_mean_map(acc, grid, out_dir / name, title, area.outline)
        mean, _, _ = regional_mean(acc.mean(), grid, area.inside)
        maps.append(MapInfo(kind=acc.kind, label=acc.label, path=str(path), n_days=acc.n_days,
                            first=str(acc.first), last=str(acc.last), mean_ppm=rounded(mean)))

    daily = scan_archive(archive_root, region_name, grid, days, on_map=write, area=area)
    return daily, maps


def report_context(archive_root: Path | str, region_name: str, grid: Grid, start: date, end: date,
                   area: ReportArea | None = None) -> dict:
    from datetime import datetime, timezone

    return {
        "area": (area or ReportArea()).describe(grid),
        "region": region_name,
        "window": [start.isoformat(), end.isoformat()],
        "grid": f"{grid.west:.2f}-{grid.east:.2f} E, {grid.south:.2f}-{grid.north:.2f} N, "
                f"{grid.nx} x {grid.ny} cells of {grid.step} degree",
        "archive": str(region_dir(archive_root, region_name)),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_report(archive_root: Path | str, region_name: str, grid: Grid, start: str | date, end: str | date,
                 out_dir: Path | str, area: ReportArea | None = None) -> dict:
    """The whole report in one call (the flow runs the same steps as tasks); `area` as scan_and_map."""
    first, last = report_window(start, end)
    days = select_days(archive_root, region_name, first, last)
    daily, maps = scan_and_map(archive_root, region_name, grid, days, out_dir, area)
    tables = summarise(daily)
    return write_outputs(out_dir, tables, maps, report_context(archive_root, region_name, grid, first, last, area))
