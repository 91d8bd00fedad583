"""Reliability of an interval: nominal against observed coverage at several levels (issue 22).

An archived half-width is the 68.27 % half-width of a Gaussian of sigma = half-width / Z68. Read
at other levels with the same sigma (50 %: 0.674 sigma, 90 %: 1.645 sigma, 95 %: 1.960 sigma), it
says how often an error should fall inside; the diagram sets that beside how often it did. A curve
on the diagonal is calibrated at every level, not only at the 68 % the interval was calibrated
for; a curve that meets the diagonal at 68 % but bends away above it says the errors have heavier
(or lighter) tails than a Gaussian, which a single coverage number hides.

Pure functions (numpy, matplotlib's Agg canvas), no Prefect: the retrain report
(tasks/steps/retrain_results.py) and the real benchmark (flows/benchmark_real.py) draw with them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from models.residual_field import Z68
from tasks.io.atomic import atomic_path

# The nominal levels of the diagram; 0.6827 (one sigma) rather than 0.68 so that the 68 % point is
# exactly the coverage of the archived half-width, as every other table of the project prints it.
LEVELS: tuple[float, ...] = (0.50, 0.6827, 0.90, 0.95)


def z_of(level: float) -> float:
    """Half-width in sigmas of the central `level` of a Gaussian."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"a coverage level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def level_label(level: float) -> str:
    return f"{100 * level:.0f} %"


# How much of the resampled coverages a CoverageRange spans.
RANGE_LEVEL = 0.90


@dataclass(frozen=True)
class CoverageRange:
    """How far a 68 % coverage could move by chance: the central RANGE_LEVEL of the coverages of
    `groups` resampled with replacement (a cluster bootstrap). The values of one day (or one
    block) share that day's level error, so a set of 5,000 cell-days from 6 days is 6 draws, not
    5,000: its coverage can miss 68 % by 15 points with a calibrated interval. NaN bounds with
    fewer than two groups."""

    low: float
    high: float
    groups: int
    unit: str  # what a group is: "days", "blocks"

    def to_dict(self) -> dict:
        return {"low": None if not np.isfinite(self.low) else round(self.low, 4),
                "high": None if not np.isfinite(self.high) else round(self.high, 4),
                "groups": self.groups, "unit": self.unit}

    @classmethod
    def from_dict(cls, d: dict) -> CoverageRange:
        """Back from to_dict (a result.json's, a summary's)."""
        return cls(float("nan") if d.get("low") is None else float(d["low"]),
                   float("nan") if d.get("high") is None else float(d["high"]), int(d["groups"]), str(d["unit"]))

    def reading(self) -> str:
        """'6 days: 28-80 % by chance' for a printed table."""
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.groups} {self.unit}: too few to say how much is chance"
        return (f"{self.groups} {self.unit}: {100 * self.low:.0f}-{100 * self.high:.0f} % "
                f"in {100 * RANGE_LEVEL:.0f} % of resamplings of the {self.unit}")


def coverage_range(hits: np.ndarray, groups: np.ndarray, weight: np.ndarray | None = None, unit: str = "days",
                   resamples: int = 2000, seed: int = 0) -> CoverageRange:
    """The cluster-bootstrap range of the weighted coverage mean(hits) (CoverageRange)."""
    hits = np.asarray(hits, np.float64)
    w = np.ones_like(hits) if weight is None else np.asarray(weight, np.float64)
    if len(hits) != len(groups) or len(hits) != len(w):
        raise ValueError(f"coverage_range: {len(hits)} hits, {len(groups)} groups, {len(w)} weights")
    labels, which = np.unique(np.asarray(groups), return_inverse=True)
    if len(labels) < 2:
        return CoverageRange(float("nan"), float("nan"), int(len(labels)), unit)
    covered = np.bincount(which, weights=w * hits, minlength=len(labels))
    total = np.bincount(which, weights=w, minlength=len(labels))
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    counts = np.apply_along_axis(np.bincount, 1, draws, minlength=len(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = (counts @ covered) / (counts @ total)
    resampled = resampled[np.isfinite(resampled)]
    tail = (1 - RANGE_LEVEL) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return CoverageRange(float(low), float(high), int(len(labels)), unit)


@dataclass(frozen=True)
class Reliability:
    """One interval's observed coverage at each nominal level, over one set of held-out values."""

    name: str  # what the interval is and what it is checked against, in a reader's words
    levels: tuple[float, ...]
    observed: tuple[float, ...]  # NaN where nothing was scored
    n: int  # values scored (finite error and half-width, positive weight)
    range68: CoverageRange | None = None  # the 68 % coverage's chance range, where groups were given

    def to_dict(self) -> dict:
        out = {"name": self.name, "n": self.n,
               "coverage": {level_label(lv): (None if not np.isfinite(o) else round(o, 4))
                            for lv, o in zip(self.levels, self.observed)}}
        if self.range68 is not None:
            out["range68"] = self.range68.to_dict()
        return out


def coverage_at_levels(error: np.ndarray, half_width68: np.ndarray, weight: np.ndarray | None = None,
                       levels: Sequence[float] = LEVELS) -> tuple[tuple[float, ...], int]:
    """Weighted fraction of |error| <= z(level) / Z68 x half_width68 at each level, and how many
    values entered (finite error and half-width, weight > 0). NaN coverage when none did."""
    e = np.abs(np.asarray(error, np.float64))
    hw = np.asarray(half_width68, np.float64)
    w = np.ones_like(e) if weight is None else np.asarray(weight, np.float64)
    ok = np.isfinite(e) & np.isfinite(hw) & np.isfinite(w) & (w > 0)
    if not ok.any():
        return tuple(float("nan") for _ in levels), 0
    e, sigma, w = e[ok], hw[ok] / Z68, w[ok]
    return tuple(float(np.average(e <= z_of(lv) * sigma, weights=w)) for lv in levels), int(ok.sum())


def reliability(name: str, error: np.ndarray, half_width68: np.ndarray, weight: np.ndarray | None = None,
                levels: Sequence[float] = LEVELS, groups: np.ndarray | None = None,
                unit: str = "days") -> Reliability:
    """groups: what each value's error is shared with (its day, its block); with them the 68 %
    coverage gets its chance range (coverage_range)."""
    observed, n = coverage_at_levels(error, half_width68, weight, levels)
    spread = None
    if groups is not None:
        e = np.abs(np.asarray(error, np.float64))
        hw = np.asarray(half_width68, np.float64)
        w = np.ones_like(e) if weight is None else np.asarray(weight, np.float64)
        ok = np.isfinite(e) & np.isfinite(hw) & np.isfinite(w) & (w > 0)
        if ok.any():
            spread = coverage_range(e[ok] <= hw[ok], np.asarray(groups)[ok], w[ok], unit)
    return Reliability(name, tuple(levels), observed, n, spread)


def combined_half_width(half_width68: np.ndarray, extra_variance: float | np.ndarray) -> np.ndarray:
    """A 68 % half-width widened by an independent Gaussian part of variance `extra_variance`
    (ppm2): sqrt(half_width^2 + Z68^2 x variance). The true column's interval widened by an
    independent estimate of the retrieval noise is what a held-out retrieval should fall in."""
    return np.sqrt(np.asarray(half_width68, np.float64) ** 2 + Z68 ** 2 * np.asarray(extra_variance, np.float64))


def markdown_table(curves: Sequence[Reliability]) -> str:
    """A row per interval: its coverage at each nominal level, and N."""
    return markdown_rows([c.to_dict() for c in curves])


def markdown_rows(rows: Sequence[dict]) -> str:
    """markdown_table of curves as `Reliability.to_dict` gives them (a result.json's)."""
    if not rows:
        return ""
    labels = list(rows[0]["coverage"])
    head = ["interval"] + [f"nominal {label}" for label in labels] + ["N"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["name"]] + [("" if row["coverage"].get(label) is None else f"{row['coverage'][label]:.1%}")
                                 for label in labels] + [str(row["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reliability_figure(curves: Sequence[Reliability], path: Path | str, title: str, note: str | None = None) -> Path:
    """The diagram as PNG, written atomically: observed against nominal coverage, one line per
    interval, the diagonal for a calibrated interval. `note`: a line under the axes (what is not drawn
    and why)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(6.0, 5.4 if note else 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0.3, 1.0], [0.3, 1.0], color="0.4", linestyle="--", linewidth=1, label="calibrated")
    markers = "osD^vP*X"
    drawn = 0
    for k, c in enumerate(curves):
        observed = np.asarray(c.observed, np.float64)
        if not np.isfinite(observed).any():
            continue
        axes.plot(c.levels, observed, marker=markers[k % len(markers)], linewidth=1.5, label=f"{c.name} (N {c.n})")
        drawn += 1
    axes.set_xticks(list(LEVELS), [level_label(lv) for lv in LEVELS])
    axes.set_xlim(0.4, 1.0)
    axes.set_ylim(0.3, 1.0)
    axes.set_xlabel("nominal coverage (Gaussian scaling of the 68 % half-width)")
    axes.set_ylabel("observed coverage of held-out values")
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=10)
    if drawn:
        axes.legend(fontsize=7, loc="lower right")
    else:
        axes.text(0.7, 0.5, "nothing to score", ha="center", va="center", color="0.4")
    if note:
        # supxlabel: the constrained layout makes room for it under the axis label.
        figure.supxlabel(textwrap.fill(note, 110), fontsize=7, color="0.3")
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png")
    return path
