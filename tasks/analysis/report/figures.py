"""The report's figures (matplotlib on an Agg canvas, no pyplot): the mean maps, the time series
of the regional means and the seasonal cycle (the paper's Figs. 8-10)."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.analysis.report.scan import MeanAccumulator
from tasks.analysis.report.window import MONTH_ABBR
from tasks.gridding.geometry import Grid
from tasks.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from shapely.geometry.base import BaseGeometry

_MAX_MAP_PIXELS_WIDE = 800
TIMESERIES_PNG = "timeseries.png"
TRUE_COLUMN_MAP_PNG = "true_column_interval.png"
SEASONAL_CYCLE_PNG = "seasonal_cycle.png"


def _figure(width: float, height: float) -> Figure:
    # A Figure without pyplot (the Agg canvas): no global state, no display, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png")
    return path


def _block_mean(acc: MeanAccumulator, factor: int) -> np.ndarray:
    # Block sums of sums and counts: each pixel is the exact mean of its cell-days.
    if factor == 1:
        return acc.mean()
    ny, nx = acc.shape
    pad = ((0, (-ny) % factor), (0, (-nx) % factor))
    sums, counts = np.pad(acc.sums, pad), np.pad(acc.counts, pad)
    by, bx = sums.shape[0] // factor, sums.shape[1] // factor
    sums = sums.reshape(by, factor, bx, factor).sum(axis=(1, 3))
    counts = counts.reshape(by, factor, bx, factor).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _draw_outline(axes: Axes, outline: BaseGeometry) -> None:
    for polygon in getattr(outline, "geoms", [outline]):
        for ring in (polygon.exterior, *polygon.interiors):
            x, y = ring.xy
            axes.plot(x, y, color="black", linewidth=0.8)


def plot_mean_map(acc: MeanAccumulator, grid: Grid, png_path: Path | str, title: str, outline: BaseGeometry | None = None,
                  label: str = "XCO2 (ppm)", cmap: str = "viridis") -> Path:
    """A mean map as PNG: lon/lat axes, colourbar in ppm (`label`), the period and its day count in the
    title, and the region's boundary (`outline`, a shapely polygon) when it has one."""
    from matplotlib.ticker import MaxNLocator

    png_path = Path(png_path)
    factor = max(1, math.ceil(grid.nx / _MAX_MAP_PIXELS_WIDE))
    values = _block_mean(acc, factor)
    west, north = grid.west, grid.north
    east = west + values.shape[1] * factor * grid.step
    south = north - values.shape[0] * factor * grid.step
    finite = values[np.isfinite(values)]
    # Percentiles, not min/max: a few odd cells should not wash out the gradients.
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    aspect = 1 / max(math.cos(math.radians((grid.south + grid.north) / 2)), 0.1)
    height_per_width = (grid.north - grid.south) * aspect / (grid.east - grid.west)
    map_width = min(6.0, 7.5 / height_per_width)
    figure = _figure(map_width + 1.9, max(map_width * height_per_width + 1.3, 2.8))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), extent=(west, east, south, north), origin="upper",
                        cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes.set_xlim(grid.west, grid.east)
    axes.set_ylim(grid.south, grid.north)
    axes.set_aspect(aspect)
    axes.set_facecolor("0.85")  # cells never estimated in the period show grey
    axes.xaxis.set_major_locator(MaxNLocator(nbins=max(2, int(map_width))))
    axes.set_xlabel("Longitude (°E)")
    axes.set_ylabel("Latitude (°N)")
    axes.set_title(f"{title}\n{acc.n_days} day{'s' if acc.n_days != 1 else ''}, {acc.first} .. {acc.last}",
                   fontsize=10)
    if outline is not None:
        _draw_outline(axes, outline)
        axes.set_xlim(grid.west, grid.east)  # the outline may reach past the box
        axes.set_ylim(grid.south, grid.north)
    colourbar_axes = axes.inset_axes((1.03, 0.0, 0.035, 1.0))
    figure.colorbar(image, cax=colourbar_axes, label=label)
    return _save(figure, png_path)


def _month_mid(month: str) -> date:
    year, m = (int(p) for p in month.split("-"))
    return date(year, m, 15)


def plot_timeseries(daily: list[dict], monthly: list[dict], png_path: Path | str, title: str,
                    window: tuple[date, date] | None = None) -> Path:
    """Daily regional means (dots) and monthly means (bars across each month, dots at mid-month)."""
    import matplotlib.dates as mdates

    figure = _figure(9.0, 4.0)
    axes = figure.add_subplot()
    points = [(date.fromisoformat(r["day"]), r["mean_ppm"]) for r in daily if r["mean_ppm"] is not None]
    # The x values are dates, which matplotlib converts through its units registry (matplotlib.dates);
    # its stubs type them as numbers only, hence the arg-type ignores below.
    axes.plot([p[0] for p in points], [p[1] for p in points], ".", color="tab:blue", alpha=0.6,  # type: ignore[arg-type]
              markersize=4, label="daily regional mean", zorder=3)
    for i, row in enumerate(monthly):
        year, m = row["year"], row["month_of_year"]
        start = date(year, m, 1)
        end = date(year + (m == 12), m % 12 + 1, 1)
        axes.hlines(row["mean_ppm"], start, end, color="tab:red", linewidth=2,  # type: ignore[arg-type]
                    label="monthly mean" if i == 0 else "")
    axes.plot([_month_mid(r["month"]) for r in monthly], [r["mean_ppm"] for r in monthly], "o-",  # type: ignore[arg-type]
              color="tab:red", markersize=3, linewidth=0.8, alpha=0.7)
    if window is not None:
        pad = timedelta(days=max(1, ((window[1] - window[0]).days + 1) // 50))
        axes.set_xlim(window[0] - pad, window[1] + pad)  # type: ignore[arg-type]
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.set_ylabel("XCO2 (ppm)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(figure, Path(png_path))


def plot_seasonal_cycle(monthly_clim: list[dict], seasonal_clim: list[dict], png_path: Path | str,
                        title: str) -> Path:
    """Mean by calendar month (Fig. 10) with the season means (Fig. 9) as horizontal bars."""
    figure = _figure(7.5, 3.8)
    axes = figure.add_subplot()
    # NaN for months without data: the line breaks there instead of bridging the gap.
    by_month = np.full(12, np.nan)
    for r in monthly_clim:
        by_month[r["month_of_year"] - 1] = r["mean_ppm"]
    axes.plot(range(1, 13), by_month, "o-", color="tab:blue", label="calendar-month mean")
    season_months = {"DJF": (0.5, 2.5), "MAM": (2.5, 5.5), "JJA": (5.5, 8.5), "SON": (8.5, 11.5)}
    for i, row in enumerate(seasonal_clim):
        lo, hi = season_months[row["season"]]
        axes.hlines(row["mean_ppm"], lo, hi, color="tab:orange", linewidth=2,
                    label="season mean" if i == 0 else "")
        if row["season"] == "DJF":  # December sits at the right-hand end
            axes.hlines(row["mean_ppm"], 11.5, 12.5, color="tab:orange", linewidth=2)
    axes.set_xticks(range(1, 13), MONTH_ABBR)
    axes.set_xlim(0.5, 12.5)
    axes.set_ylabel("XCO2 (ppm)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(figure, Path(png_path))
