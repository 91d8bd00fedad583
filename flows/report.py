"""`xco2 report`: annual, seasonal and monthly means of the archive, growth rates and mean maps.

The work is in `tasks/analysis/report/` (plain functions, tested without Prefect); this flow runs its
steps as tasks (tasks/prefect_tasks.py) and publishes the tables and the summary as artifacts under stable keys.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.analysis import report
from tasks.prefect_tasks import report_scan_and_map, report_select_days, report_summarise, report_write_outputs
from tasks.gridding.geometry import Grid
from tasks.settings import Settings, load_settings

ARTIFACT_KEYS = {
    "monthly": "report-monthly-means",
    "seasonal": "report-seasonal-means",
    "annual": "report-annual-means",
    "summary": "report-summary",
}


def default_out_dir(settings: Settings, first: date, last: date) -> Path:
    return settings.data_dir / "reports" / settings.region.name / f"{first}_{last}"


@flow(name="xco2-archive-report", log_prints=True)
def archive_report(start: str, end: str, out_dir: str | None = None, overrides: dict | None = None) -> dict:
    """Write the report of the archived days in [start, end] to `out_dir` and publish it as artifacts."""
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    grid = Grid.for_region(settings.region, settings.grid_step)
    first, last = report.report_window(start, end)
    target = Path(out_dir) if out_dir else default_out_dir(settings, first, last)
    region = settings.region.name

    days = report_select_days(settings.archive_root, region, first, last)
    logger.info("report of %d archived days of %s, %s..%s, into %s", len(days), region, first, last, target)
    area = report.ReportArea.for_region(settings.region, grid)  # the boundary's cells, or the whole box
    daily, maps = report_scan_and_map(settings.archive_root, region, grid, days, target, area)
    tables = report_summarise(daily)
    context = report.report_context(settings.archive_root, region, grid, first, last, area)
    result = report_write_outputs(target, tables, maps, context)

    window = f"{first}..{last} ({region})"
    create_table_artifact(key=ARTIFACT_KEYS["monthly"], table=tables["monthly"],
                          description=f"Monthly regional mean XCO2, {window}")
    create_table_artifact(key=ARTIFACT_KEYS["seasonal"], table=tables["seasonal"],
                          description=f"Seasonal regional mean XCO2 (December in the next winter), {window}")
    create_table_artifact(key=ARTIFACT_KEYS["annual"], table=tables["annual"],
                          description=f"Annual regional mean XCO2, {window}")
    files = [result["summary"], *result["figures"].values(), *(m["path"] for m in result["maps"]),
             *result["csv"].values()]
    create_markdown_artifact(key=ARTIFACT_KEYS["summary"], description=f"Archive report {window}", markdown=(
        result["markdown"] + "\n## Files\n\n" + "\n".join(f"- `{Path(f).resolve()}`" for f in files) + "\n"))
    for note in tables["needs_more_data"]:
        logger.info("needs more data: %s", note)
    interval = tables["true_column_interval"]
    logger.info("true column's interval: mapped over %d days, %d archived without its band skipped",
                interval["n_days"], interval["days_without_band"])
    return {k: result[k] for k in ("out_dir", "summary", "csv", "figures", "maps", "json")} | {
        "window": [first.isoformat(), last.isoformat()], "region": region, "n_days": len(days),
        "synthetic_days": tables["synthetic_days"], "needs_more_data": tables["needs_more_data"],
        "true_column_interval": tables["true_column_interval"],
        "artifacts": dict(ARTIFACT_KEYS)}
