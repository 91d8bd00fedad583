"""The report's statistics from the daily regional means: monthly, seasonal and annual means, the
climatologies, growth rates beside the paper's Table 6, and which of them need more data."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from tasks.analysis.report.scan import DayStat, rounded
from tasks.analysis.report.window import (MONTH_ABBR, SEASON_NAMES, SEASONS, month_days, season_days, season_of,
                                          year_days)

PARTIAL_BELOW = 0.9  # a period with fewer than 90 % of its days archived is "partial"
# Zhang et al. (2024), the project's reference paper (its text does not ship with the project):
# Table 6, annual mean XCO2 over Sichuan province from their ResNet-LSTM maps (ppm), and the growth
# rate its text gives for 2015-2022. The table's own least-squares slope is about 2.49 ppm/yr and
# (2022 - 2015) / 7 is 2.53, so the text's 2.21 is reported as the paper states it, beside both.
PAPER_CITATION = ("Zhang H., Chang Z., Teng Y., Wei Y., Chen Y., Ma S. (2024), Reconstruction on High-Resolution "
                  "XCO2 Spatiotemporal Distribution in Sichuan Province Using ResNet-LSTM Model, Table 6")
PAPER_TABLE6_ANNUAL_PPM = {2015: 398.92, 2016: 402.52, 2017: 404.93, 2018: 407.07,
                           2019: 409.72, 2020: 412.38, 2021: 414.57, 2022: 416.60}
PAPER_GROWTH_PPM_PER_YR = 2.21  # 2015-2022, as the paper's text states it
PAPER_AREA = "Sichuan province"


def _period_row(stats: list[DayStat], period_days: int | None) -> dict:
    means = np.array([s.mean_ppm for s in stats], dtype=np.float64)
    row: dict[str, Any] = {
        "mean_ppm": rounded(float(means.mean())),
        "std_daily_ppm": rounded(float(means.std(ddof=1))) if len(means) > 1 else None,
        "n_days": len(stats),
    }
    if period_days is not None:
        row["period_days"] = period_days
        row["day_coverage"] = rounded(len(stats) / period_days, 3)
        row["partial"] = len(stats) < PARTIAL_BELOW * period_days
    row["mean_cell_coverage"] = rounded(float(np.mean([s.coverage for s in stats])), 4)
    row["first_day"] = min(s.day for s in stats).isoformat()
    row["last_day"] = max(s.day for s in stats).isoformat()
    return row


def _group(stats: Iterable[DayStat], key: Callable[[DayStat], Any]) -> dict[Any, list[DayStat]]:
    groups: dict[Any, list[DayStat]] = {}
    for s in stats:
        groups.setdefault(key(s), []).append(s)
    return dict(sorted(groups.items()))


def monthly_means(daily: list[DayStat]) -> list[dict]:
    rows = []
    for (year, month), group in _group(_with_values(daily), lambda s: (s.day.year, s.day.month)).items():
        rows.append({"month": f"{year:04d}-{month:02d}", "year": year, "month_of_year": month,
                     **_period_row(group, month_days(year, month))})
    return rows


def seasonal_means(daily: list[DayStat]) -> list[dict]:
    """Per season of each year; DJF of year Y is December Y-1 + January and February Y."""
    order = {s: i for i, s in enumerate(SEASONS)}
    groups = _group(_with_values(daily), lambda s: (season_of(s.day)[0], order[season_of(s.day)[1]]))
    rows = []
    for (season_year, index), group in groups.items():
        season = SEASONS[index]
        rows.append({"season_year": season_year, "season": season, "label": f"{season} {season_year}",
                     **_period_row(group, season_days(season_year, season))})
    return rows


def with_paper(annual: list[dict]) -> list[dict]:
    """The annual rows with the paper's Table 6 mean of the year (None outside 2015-2022) and the
    difference (this archive - paper)."""
    rows = []
    for row in annual:
        paper = PAPER_TABLE6_ANNUAL_PPM.get(row["year"])
        rows.append({**row, "paper_ppm": paper,
                     "minus_paper_ppm": rounded(row["mean_ppm"] - paper) if paper is not None and row["mean_ppm"] is not None
                     else None})
    return rows


def paper_growth() -> dict:
    years = sorted(PAPER_TABLE6_ANNUAL_PPM)
    values = [PAPER_TABLE6_ANNUAL_PPM[y] for y in years]
    return {"citation": PAPER_CITATION, "area": PAPER_AREA, "years": f"{years[0]}-{years[-1]}",
            "text_ppm_per_yr": PAPER_GROWTH_PPM_PER_YR,
            "table_slope_ppm_per_yr": rounded(float(np.polyfit(years, values, 1)[0])),
            "table_mean_ppm": rounded(float(np.mean(values)))}


def annual_means(daily: list[DayStat]) -> list[dict]:
    return [{"year": year, **_period_row(group, year_days(year))}
            for year, group in _group(_with_values(daily), lambda s: s.day.year).items()]


def monthly_climatology(daily: list[DayStat]) -> list[dict]:
    """Per calendar month over all years in the window (the paper's Fig. 10)."""
    rows = []
    for month, group in _group(_with_values(daily), lambda s: s.day.month).items():
        row = _period_row(group, None)
        rows.append({"month_of_year": month, "month": MONTH_ABBR[month - 1], "mean_ppm": row["mean_ppm"],
                     "n_days": row["n_days"], "n_years": len({s.day.year for s in group}),
                     "first_day": row["first_day"], "last_day": row["last_day"]})
    return rows


def seasonal_climatology(daily: list[DayStat]) -> list[dict]:
    """Per season over all years in the window (the paper's Fig. 9)."""
    rows = []
    for season in SEASONS:
        group = [s for s in _with_values(daily) if season_of(s.day)[1] == season]
        if not group:
            continue
        row = _period_row(group, None)
        rows.append({"season": season, "name": SEASON_NAMES[season], "mean_ppm": row["mean_ppm"],
                     "n_days": row["n_days"], "n_seasons": len({season_of(s.day)[0] for s in group}),
                     "first_day": row["first_day"], "last_day": row["last_day"]})
    return rows


def growth_rates(annual: list[dict]) -> dict:
    """Year-over-year growth of the annual means and their linear trend (ppm/yr)."""
    years = [row["year"] for row in annual]
    means = [row["mean_ppm"] for row in annual]
    partial = {row["year"]: row.get("partial", False) for row in annual}
    yoy = []
    for (y0, m0), (y1, m1) in zip(zip(years, means), zip(years[1:], means[1:])):
        yoy.append({"from_year": y0, "to_year": y1, "growth_ppm_per_yr": rounded((m1 - m0) / (y1 - y0)),
                    "partial_years": bool(partial[y0] or partial[y1])})
    trend = None
    if len(years) >= 2:
        x = np.array(years, dtype=np.float64)
        y = np.array(means, dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        stderr = None
        if len(years) >= 3:
            residuals = y - (slope * x + intercept)
            stderr = math.sqrt(float((residuals ** 2).sum()) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        trend = {"years": f"{years[0]}-{years[-1]}", "n_years": len(years),
                 "slope_ppm_per_yr": rounded(float(slope)), "stderr_ppm_per_yr": rounded(stderr),
                 "mean_growth_ppm_per_yr": rounded((means[-1] - means[0]) / (years[-1] - years[0])),
                 "partial_years": [yr for yr in years if partial[yr]]}
    return {"year_over_year": yoy, "linear_trend": trend}


def _with_values(daily: Iterable[DayStat]) -> list[DayStat]:
    return [s for s in daily if s.mean_ppm is not None]


def needs_more_data(daily: list[DayStat], annual: list[dict], monthly_clim: list[dict],
                    seasonal_clim: list[dict], seasonal: list[dict]) -> list[str]:
    """Plain sentences: which statistics this window cannot support yet, and what they need."""
    notes = []
    empty = [s.day.isoformat() for s in daily if s.mean_ppm is None]
    if empty:
        notes.append(f"{len(empty)} archived day(s) have no cell with a value and are left out: "
                     f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}.")
    years = [row["year"] for row in annual]
    if len(years) < 2:
        notes.append(f"Growth rates (year-over-year and the linear trend, Table 6) need archived days in at "
                     f"least 2 calendar years; this window has {len(years)} ({', '.join(map(str, years)) or 'none'}).")
    elif len(years) < 3:
        notes.append("The linear trend's standard error needs at least 3 years; with 2 it is just their difference.")
    partial_years = [row["year"] for row in annual if row.get("partial")]
    if partial_years:
        notes.append(f"Annual means of {', '.join(map(str, partial_years))} come from partial years (under "
                     f"{100 * PARTIAL_BELOW:.0f} % of the days archived): they lean towards the archived part of the "
                     "seasonal cycle (about 5 ppm peak to trough), so annual means and growth rates using them "
                     "are indicative only.")
    missing_months = [MONTH_ABBR[m - 1] for m in range(1, 13) if m not in {r["month_of_year"] for r in monthly_clim}]
    if missing_months:
        notes.append(f"The seasonal cycle (Fig. 10: peak month, trough month, amplitude) needs all 12 calendar "
                     f"months; missing: {', '.join(missing_months)}.")
    missing_seasons = [s for s in SEASONS if s not in {r["season"] for r in seasonal_clim}]
    if missing_seasons:
        notes.append(f"The seasonal comparison (Fig. 9: highest and lowest season) needs all four seasons; "
                     f"missing: {', '.join(missing_seasons)}.")
    partial_seasons = [row["label"] for row in seasonal if row.get("partial")]
    if partial_seasons:
        notes.append(f"Partial seasons (under {100 * PARTIAL_BELOW:.0f} % of their days): "
                     f"{', '.join(partial_seasons)}.")
    return notes


def seasonal_cycle(monthly_clim: list[dict], seasonal_clim: list[dict]) -> dict:
    """Peak/trough month and amplitude (all 12 months needed), highest/lowest season (all 4)."""
    out: dict[str, Any] = {}
    if len(monthly_clim) == 12:
        peak = max(monthly_clim, key=lambda r: r["mean_ppm"])
        trough = min(monthly_clim, key=lambda r: r["mean_ppm"])
        out.update(peak_month=peak["month"], peak_ppm=peak["mean_ppm"], trough_month=trough["month"],
                   trough_ppm=trough["mean_ppm"], amplitude_ppm=rounded(peak["mean_ppm"] - trough["mean_ppm"]))
    if len(seasonal_clim) == 4:
        high = max(seasonal_clim, key=lambda r: r["mean_ppm"])
        low = min(seasonal_clim, key=lambda r: r["mean_ppm"])
        out.update(highest_season=high["season"], highest_season_ppm=high["mean_ppm"],
                   lowest_season=low["season"], lowest_season_ppm=low["mean_ppm"],
                   season_range_ppm=rounded(high["mean_ppm"] - low["mean_ppm"]))
    return out


def model_versions(daily: list[DayStat]) -> list[dict]:
    rows = []
    for (name, version), group in _group(daily, lambda s: (s.model_name or "", s.model_version or "")).items():
        rows.append({"model_name": name or None, "model_version": version or None, "n_days": len(group),
                     "first_day": min(s.day for s in group).isoformat(),
                     "last_day": max(s.day for s in group).isoformat()})
    return rows


def true_column_interval(daily: list[DayStat]) -> dict:
    """The true column's half-width over the window: the mean of its daily regional means, the days
    that had the band, and the days skipped for lacking it (archived before issue 22)."""
    values = [s.true_column_interval_ppm for s in daily if s.true_column_interval_ppm is not None]
    return {"mean_ppm": rounded(float(np.mean(values))) if values else None, "n_days": len(values),
            "days_without_band": sum(not s.true_column_band for s in daily)}


def summarise(daily: list[DayStat]) -> dict:
    """Every table of the report, from the daily statistics (no file access)."""
    if not _with_values(daily):
        span = f" ({daily[0].day} .. {daily[-1].day})" if daily else ""
        raise ValueError(f"none of the {len(daily)} archived days in the window{span} has a cell with a value")
    monthly, seasonal, annual = monthly_means(daily), seasonal_means(daily), annual_means(daily)
    monthly_clim, seasonal_clim = monthly_climatology(daily), seasonal_climatology(daily)
    return {
        "daily": [s.row() for s in daily],
        "monthly": monthly,
        "seasonal": seasonal,
        "annual": with_paper(annual),
        "monthly_climatology": monthly_clim,
        "seasonal_climatology": seasonal_clim,
        "growth": growth_rates(annual),
        "paper": paper_growth(),
        "seasonal_cycle": seasonal_cycle(monthly_clim, seasonal_clim),
        "models": model_versions(daily),
        "synthetic_days": sum(s.synthetic for s in daily),
        "n_days": len(daily),
        "true_column_interval": true_column_interval(daily),
        "needs_more_data": needs_more_data(daily, annual, monthly_clim, seasonal_clim, seasonal),
    }
