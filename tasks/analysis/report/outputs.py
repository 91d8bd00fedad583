"""The report's files: the CSV tables, summary.md and report.json (each written atomically), beside
the time-series figures."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from tasks.analysis.report.figures import (SEASONAL_CYCLE_PNG, TIMESERIES_PNG, TRUE_COLUMN_MAP_PNG, plot_seasonal_cycle,
                                           plot_timeseries)
from tasks.analysis.report.scan import INTERVAL_KIND, MapInfo
from tasks.analysis.report.tables import PARTIAL_BELOW
from tasks.analysis.report.window import SEASON_NAMES
from tasks.io.atomic import publish_text

SUMMARY_FILE = "summary.md"
CSV_FILES = {
    "daily": "daily_means.csv",
    "monthly": "monthly_means.csv",
    "seasonal": "seasonal_means.csv",
    "annual": "annual_means.csv",
    "monthly_climatology": "monthly_climatology.csv",
    "seasonal_climatology": "seasonal_climatology.csv",
    "growth": "growth_rates.csv",
}


def write_csv(path: Path | str, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return publish_text(path, buffer.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_table(rows: list[dict], columns: list[tuple[str, str]], digits: dict[str, int] | None = None) -> str:
    if not rows:
        return "_none_\n"
    digits = digits or {}
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), digits.get(key, 2)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def summary_markdown(tables: dict, maps: list[MapInfo], context: dict, figures: dict[str, str]) -> str:
    """The report as Markdown; links to the PNGs are relative (they sit next to summary.md)."""
    region = context["region"]
    first, last = context["window"]
    lines = [f"# XCO2 archive report: {region}, {first} .. {last}", ""]
    if tables["synthetic_days"]:
        lines += [f"> **DEMO OUTPUT: SYNTHETIC DATA, NOT REAL XCO2.** {tables['synthetic_days']} of the "
                  f"{tables['n_days']} archived days in this window are tagged `synthetic=true` (made from the "
                  "demo world). Nothing below describes the real atmosphere.", ""]
    calendar_days = (date.fromisoformat(last) - date.fromisoformat(first)).days + 1
    area = context.get("area") or {}
    if area.get("boundary"):
        over = (f"the {area['cells']:,} cells inside the boundary `{area['boundary']}`, {area['km2']:,} km2 (of the "
                f"box's {area['box_cells']:,} cells, {area['box_km2']:,} km2)")
    elif area:
        over = f"the whole box, {area['cells']:,} cells, {area['km2']:,} km2 (the region has no boundary)"
    else:
        over = "the whole box"
    lines += [
        f"- region: `{region}`, {context['grid']}",
        f"- averaged over: {over}",
        f"- archive: `{context['archive']}`",
        f"- days archived in the window: {tables['n_days']} of {calendar_days} "
        f"({tables['daily'][0]['day']} .. {tables['daily'][-1]['day']})",
        f"- generated: {context.get('generated', '-')}",
        "",
        "Method: the daily regional mean is the cos(latitude) area-weighted mean of the cells with a value "
        "(NaN is no data); monthly, seasonal and annual means are means of the daily means of the archived "
        "days. Seasons: DJF, MAM, JJA, SON, with **December counted in the following year's winter** "
        "(DJF 2021 = Dec 2020 + Jan-Feb 2021). `coverage` = archived days / calendar days of the period; "
        f"`partial` = under {100 * PARTIAL_BELOW:.0f} % of the days. Growth: year-over-year difference of annual "
        "means; trend: least-squares slope of the annual means.",
        "",
    ]
    if tables["needs_more_data"]:
        lines += ["## Needs more data", ""] + [f"- {note}" for note in tables["needs_more_data"]] + [""]

    annual = tables["annual"]
    paper = tables["paper"]
    lines += ["## Annual means (Table 6)", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"]), "cells": _pct(r["mean_cell_coverage"])}
                         for r in annual],
                        [("year", "year"), ("mean_ppm", "mean (ppm)"), ("paper_ppm", "paper (ppm)"),
                         ("minus_paper_ppm", "minus paper"), ("n_days", "days"),
                         ("day_coverage", "coverage"), ("partial", "partial"), ("cells", "area with values")]),
              f"`paper`: {paper['citation']}, annual means over {paper['area']} {paper['years']} (mean "
              f"{paper['table_mean_ppm']:.2f} ppm); comparable only when this report averages over that province.",
              ""]

    growth = tables["growth"]
    lines += ["## Growth rates", ""]
    if growth["year_over_year"]:
        lines.append(_md_table(growth["year_over_year"],
                               [("from_year", "from"), ("to_year", "to"), ("growth_ppm_per_yr", "growth (ppm/yr)"),
                                ("partial_years", "partial years")]))
    trend = growth["linear_trend"]
    if trend:
        stderr = f" ± {trend['stderr_ppm_per_yr']:.2f}" if trend["stderr_ppm_per_yr"] is not None else ""
        lines += [f"Linear trend {trend['years']} ({trend['n_years']} years): **{trend['slope_ppm_per_yr']:.2f}"
                  f"{stderr} ppm/yr**; mean growth (last - first) / years: {trend['mean_growth_ppm_per_yr']:.2f} "
                  "ppm/yr." + (f" Partial years: {', '.join(map(str, trend['partial_years']))}."
                               if trend["partial_years"] else ""), ""]
    else:
        lines += ["_Needs at least 2 calendar years with archived days (see above)._", ""]
    lines += [f"Paper, {paper['area']} {paper['years']}: {paper['text_ppm_per_yr']:.2f} ppm/yr as its text states it; "
              f"the least-squares slope of its Table 6 means is {paper['table_slope_ppm_per_yr']:.2f} ppm/yr.", ""]

    cycle = tables["seasonal_cycle"]
    lines += ["## Seasonal means (Fig. 9)", "", "All years in the window:", "",
              _md_table(tables["seasonal_climatology"],
                        [("season", "season"), ("name", ""), ("mean_ppm", "mean (ppm)"), ("n_days", "days"),
                         ("n_seasons", "seasons")])]
    if "highest_season" in cycle:
        lines += [f"Highest: {cycle['highest_season']} {cycle['highest_season_ppm']:.2f} ppm; lowest: "
                  f"{cycle['lowest_season']} {cycle['lowest_season_ppm']:.2f} ppm; range "
                  f"{cycle['season_range_ppm']:.2f} ppm.", ""]
    lines += ["Each season:", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"])} for r in tables["seasonal"]],
                        [("label", "season"), ("mean_ppm", "mean (ppm)"), ("n_days", "days"),
                         ("day_coverage", "coverage"), ("partial", "partial"), ("first_day", "first"),
                         ("last_day", "last")])]

    lines += ["## Monthly means (Fig. 10)", "", "By calendar month, all years in the window:", "",
              _md_table(tables["monthly_climatology"],
                        [("month", "month"), ("mean_ppm", "mean (ppm)"), ("n_days", "days"), ("n_years", "years")])]
    if "peak_month" in cycle:
        lines += [f"Peak {cycle['peak_month']} {cycle['peak_ppm']:.2f} ppm, trough {cycle['trough_month']} "
                  f"{cycle['trough_ppm']:.2f} ppm: seasonal amplitude {cycle['amplitude_ppm']:.2f} ppm.", ""]
    lines += ["Each month:", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"])} for r in tables["monthly"]],
                        [("month", "month"), ("mean_ppm", "mean (ppm)"), ("std_daily_ppm", "std of days"),
                         ("n_days", "days"), ("day_coverage", "coverage"), ("partial", "partial")])]

    lines += ["## Figures", ""]
    for name, caption in (("timeseries", "Daily regional mean and monthly means"),
                          ("seasonal_cycle", "Mean by calendar month and season")):
        if name in figures:
            lines.append(f"- {caption}: [{Path(figures[name]).name}]({Path(figures[name]).name})")
    for m in maps:
        if m.kind == INTERVAL_KIND:
            what = "mean 68 % half-width of the true column"
        elif m.kind == "annual":
            what = f"annual mean {m.label}"
        else:
            what = f"{m.label} ({SEASON_NAMES[m.label]}) mean"
        lines.append(f"- Map, {what}, {m.n_days} days ({m.first} .. {m.last}): "
                     f"[{Path(m.path).name}]({Path(m.path).name})")
    lines.append("")
    for name in ("timeseries", "seasonal_cycle"):
        if name in figures:
            lines += [f"![{name}]({Path(figures[name]).name})", ""]
    for m in maps:
        lines += [f"![{m.kind} {m.label}]({Path(m.path).name})", ""]

    interval = tables.get("true_column_interval") or {}
    lines += ["## The true column's interval", ""]
    if interval.get("n_days"):
        lines.append(f"Mean 68 % half-width of the true XCO2 column over the area: **{interval['mean_ppm']:.2f} ppm** "
                     f"({interval['n_days']} days; map `{TRUE_COLUMN_MAP_PNG}`). It is the uncertainty of the "
                     "column itself (background, network and field), without the retrieval noise that band 2 "
                     "adds for comparing with a new retrieval (docs/data.md).")
    else:
        lines.append("No archived day of the window has the true column's interval band.")
    if interval.get("days_without_band"):
        lines.append(f"{interval['days_without_band']} day(s) archived without that band (before it existed) "
                     "were skipped for it.")
    lines += [""]
    lines += ["## Models that made these days", "",
              _md_table(tables["models"], [("model_name", "model"), ("model_version", "version"),
                                           ("n_days", "days"), ("first_day", "first"), ("last_day", "last")])]
    lines += ["Tables as CSV: " + ", ".join(f"[{name}]({name})" for name in CSV_FILES.values()), ""]
    return "\n".join(lines)


GROWTH_COLUMNS = ["kind", "period", "growth_ppm_per_yr", "stderr_ppm_per_yr", "partial_years"]


def _growth_rows(growth: dict) -> list[dict]:
    rows = [{"kind": "year_over_year", "period": f"{r['from_year']}-{r['to_year']}",
             "growth_ppm_per_yr": r["growth_ppm_per_yr"], "stderr_ppm_per_yr": None,
             "partial_years": r["partial_years"]} for r in growth["year_over_year"]]
    trend = growth["linear_trend"]
    if trend:
        rows.append({"kind": "linear_trend", "period": trend["years"], "growth_ppm_per_yr": trend["slope_ppm_per_yr"],
                     "stderr_ppm_per_yr": trend["stderr_ppm_per_yr"], "partial_years": bool(trend["partial_years"])})
    return rows


def _remove_stale_maps(out_dir: Path, keep: set[str]) -> None:
    # A rerun into the same folder must not leave maps of years no longer in the report.
    for pattern in ("annual_*.png", "season_*.png", TRUE_COLUMN_MAP_PNG):
        for path in out_dir.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def write_outputs(out_dir: Path | str, tables: dict, maps: list[MapInfo], context: dict) -> dict:
    """CSV tables, the time-series figures, summary.md and report.json, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csvs = {}
    for key, name in CSV_FILES.items():
        rows = _growth_rows(tables["growth"]) if key == "growth" else tables[key]
        csvs[key] = str(write_csv(out_dir / name, rows, GROWTH_COLUMNS if key == "growth" else None))
    suffix = " (SYNTHETIC demo output)" if tables["synthetic_days"] else ""
    first, last = context["window"]
    figures = {
        "timeseries": str(plot_timeseries(tables["daily"], tables["monthly"], out_dir / TIMESERIES_PNG,
                                          f"Regional mean XCO2, {context['region']}, {first} .. {last}{suffix}",
                                          (date.fromisoformat(first), date.fromisoformat(last)))),
        "seasonal_cycle": str(plot_seasonal_cycle(tables["monthly_climatology"], tables["seasonal_climatology"],
                                                  out_dir / SEASONAL_CYCLE_PNG,
                                                  f"Seasonal cycle, {context['region']}, {first} .. {last}{suffix}")),
    }
    _remove_stale_maps(out_dir, {Path(m.path).name for m in maps})
    markdown = summary_markdown(tables, maps, context, figures)
    summary = publish_text(out_dir / SUMMARY_FILE, markdown)
    result = {
        "out_dir": str(out_dir),
        "summary": str(summary),
        "csv": csvs,
        "figures": figures,
        "maps": [asdict(m) for m in maps],
        "markdown": markdown,
        "context": context,
        "tables": tables,
    }
    report_json = out_dir / "report.json"
    publish_text(report_json, json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2,
                                         default=str))
    result["json"] = str(report_json)
    return result
