"""The paper's fusion of gridded satellite days into one training target ("Data Processing and
Fusion", steps 1-2).

1. OCO-2 and OCO-3 share a retrieval algorithm, so where both observe a cell on a day their
   values are simply averaged (`merge_oco`).
2. GOSAT uses a different algorithm, so it is first mapped onto the OCO scale by a linear model
   oco = a + b * gosat (`collocations`, `fit_gosat_to_oco`). A collocation is one GOSAT sounding
   against the weighted mean of the OCO cells inside its footprint on the same day, so one
   sounding is one collocation (not the ~80 cells it fills); both sides carry retrieval errors,
   so the line is a Deming regression, with jackknife standard errors. The mapped GOSAT cells
   ("GO") fill the cells OCO did not observe (`fuse_day`).

Every fused cell keeps a `source` label ('oco2', 'oco3', 'oco2+oco3' or 'gosat') so training
and evaluation can tell measured OCO cells from mapped GOSAT ones, its `weight` (independent
soundings, see tasks.gridding.cells) and `fit_id`: the id of the GOSAT fit that mapped it, '' for OCO
cells (no fit touched them). docs/fusion.md says more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Mapping, overload

import numpy as np
import pandas as pd

from tasks.gridding.cells import CELL_COLUMNS, CELL_DTYPES, FOOTPRINT_COLUMNS
from tasks.gridding.geometry import Grid

log = logging.getLogger(__name__)

FUSED_COLUMNS = CELL_COLUMNS + ["source", "fit_id"]
FUSED_DTYPES = {**CELL_DTYPES, "source": "str", "fit_id": "str"}
COLLOCATION_COLUMNS = ["day", "sounding", "gosat", "gosat_uncertainty", "oco", "oco_uncertainty",
                       "oco_weight", "oco_cells", "weight"]
FIT_METHODS = ("deming", "offset", "identity")
# The id of the fit on OCO cells: no fit was applied to them.
NO_FIT_ID = ""

# A GOSAT sounding collocates with the same day's OCO cells inside its footprint or within this
# many degrees of it. Inside the footprint only, a Sichuan demo window of 40 days held 3
# collocations, and their offset (+0.79 +- 1.67 ppm against a true -0.92) put a bias of +1.7 ppm
# into every GOSAT cell and +0.25 ppm into the maps; within 0.5 degree 29 (-0.72 +- 0.47). A
# single GOSAT sounding's noise (~2 ppm) dwarfs the true change of XCO2 across 50 km (a few tenths
# of a ppm), so the wider neighbourhood costs little and its errors average out (docs/fusion.md).
COLLOCATION_RADIUS_DEG = 0.5
# A slope needs this many independent collocated GOSAT soundings; fewer give an offset.
MIN_SOUNDINGS_FOR_SLOPE = 20
# Below this spread of GOSAT values (ppm) the slope is undetermined: a plain offset is fitted.
MIN_GOSAT_SPREAD_PPM = 0.01
# The GOSAT values' true spread (their variance less the reported error variance) must be at
# least this multiple of the error variance, or the slope is set by noise: an offset instead.
MIN_GOSAT_SIGNAL_TO_NOISE = 1.0
# Two instruments measuring the same column should agree to within a few percent in scale; a
# slope outside these bounds means noise dominated the fit, so the offset is used instead.
DEFAULT_SLOPE_BOUNDS = (0.5, 1.5)


def empty_fused() -> pd.DataFrame:
    """A fused day with no cell, with the columns and dtypes of a full one."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in FUSED_DTYPES.items()})


def _cells(frame: pd.DataFrame | None, what: str) -> pd.DataFrame:
    """The gridded-cell columns of `frame`, checked: one row per cell."""
    if frame is None or len(frame) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CELL_DTYPES.items()})
    missing = [c for c in CELL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: cell table lacks column(s) {missing}")
    if frame["cell"].duplicated().any():
        raise ValueError(f"{what}: a gridded day must hold each cell once; found duplicate cells")
    return frame[CELL_COLUMNS].astype(CELL_DTYPES)


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) == 0:
        return empty_fused()
    return frame[FUSED_COLUMNS].astype(FUSED_DTYPES).sort_values("cell").reset_index(drop=True)


def merge_oco(oco2_cells: pd.DataFrame | None, oco3_cells: pd.DataFrame | None) -> pd.DataFrame:
    """Step 1: one OCO day from the gridded OCO-2 and OCO-3 days.

    Where both observe a cell, xco2 is the plain mean of the two (as in the paper: same retrieval
    algorithm, so neither is preferred), the uncertainty that of the mean, sqrt(u2^2 + u3^2) / 2,
    n_soundings and weight the sums and source 'oco2+oco3'; elsewhere the single source's cell is kept.
    """
    oco2 = _cells(oco2_cells, "merge_oco(oco2_cells)")
    oco3 = _cells(oco3_cells, "merge_oco(oco3_cells)")
    both = oco2.merge(oco3, on="cell", how="outer", suffixes=("_2", "_3"))
    if len(both) == 0:
        return empty_fused()
    has2 = both["xco2_2"].notna().to_numpy()
    has3 = both["xco2_3"].notna().to_numpy()
    x2, x3 = both["xco2_2"].to_numpy(), both["xco2_3"].to_numpy()
    u2, u3 = both["xco2_uncertainty_2"].to_numpy(), both["xco2_uncertainty_3"].to_numpy()
    n2 = both["n_soundings_2"].fillna(0).to_numpy()
    n3 = both["n_soundings_3"].fillna(0).to_numpy()
    overlap = has2 & has3
    merged = pd.DataFrame({
        "cell": both["cell"].to_numpy(),
        "xco2": np.where(overlap, (x2 + x3) / 2.0, np.where(has2, x2, x3)),
        "xco2_uncertainty": np.where(
            overlap, np.sqrt(u2**2 + u3**2) / 2.0, np.where(has2, u2, u3)
        ),
        "n_soundings": n2 + n3,
        # Different soundings: their independent-sounding counts add.
        "weight": both["weight_2"].fillna(0.0).to_numpy() + both["weight_3"].fillna(0.0).to_numpy(),
        "source": np.where(overlap, "oco2+oco3", np.where(has2, "oco2", "oco3")),
        "fit_id": NO_FIT_ID,
    })
    return _finish(merged)


@dataclass(frozen=True)
class GosatFit:
    """The linear map of GOSAT onto the OCO scale: oco = intercept + slope * gosat.

    `method` says how it was obtained: 'deming' (errors in both variables, over the collocated
    GOSAT soundings), 'offset' (slope fixed at 1: too few collocations, too little GOSAT spread
    or an implausible slope) or 'identity' (fewer than 3 collocations: GOSAT used as is).
    intercept_se and slope_se are standard errors (jackknife for 'deming', the mean's for
    'offset', NaN for 'identity'; slope_se 0 when the slope is fixed). n_collocations counts
    collocated GOSAT soundings, n_independent the same in independent soundings (a footprint
    cut by the region's edge counts its inside share). error_ratio is the Deming ratio of OCO to
    GOSAT error variances. rmse and r2 describe the map on the collocations (NaN where too few).
    fitted_days is the (first, last) day of the collocations, None when there were none.
    collocation_digest identifies the collocation set; `fit_id` hashes it with the method and
    coefficients, so every sample mapped by this fit can say so.
    """

    intercept: float
    slope: float
    n_collocations: int
    rmse: float
    r2: float
    method: str
    fitted_days: tuple[date, date] | None = None
    intercept_se: float = math.nan
    slope_se: float = math.nan
    n_independent: float = 0.0
    error_ratio: float = math.nan
    collocation_digest: str = ""

    def __post_init__(self) -> None:
        if self.method not in FIT_METHODS:
            raise ValueError(f"GosatFit.method must be one of {FIT_METHODS}, got {self.method!r}")
        if not (math.isfinite(self.intercept) and math.isfinite(self.slope)):
            raise ValueError(
                f"GosatFit needs a finite intercept and slope, got {self.intercept}, {self.slope}"
            )

    @classmethod
    def identity(cls) -> "GosatFit":
        return cls(0.0, 1.0, 0, math.nan, math.nan, "identity", None)

    @property
    def fit_id(self) -> str:
        """A short, stable id of the method, coefficients and collocation set."""
        # Rounded well below any meaningful change, so the id survives a JSON round trip and
        # platform rounding, but any refit that moves a mapped value changes it.
        key = json.dumps([self.method, f"{self.intercept:.6f}", f"{self.slope:.9f}",
                          self.collocation_digest])
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def apply(self, gosat_xco2: np.ndarray | float) -> np.ndarray:
        """GOSAT xco2 (ppm) mapped onto the OCO scale (ppm)."""
        return self.intercept + self.slope * np.asarray(gosat_xco2, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: days as ISO strings, NaN as None."""

        def number(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None

        return {
            "fit_id": self.fit_id,
            "method": self.method,
            "intercept": float(self.intercept),
            "slope": float(self.slope),
            "intercept_se": number(self.intercept_se),
            "slope_se": number(self.slope_se),
            "n_collocations": int(self.n_collocations),
            "n_independent": float(self.n_independent),
            "error_ratio": number(self.error_ratio),
            "rmse": number(self.rmse),
            "r2": number(self.r2),
            "fitted_days": (
                None if self.fitted_days is None
                else [self.fitted_days[0].isoformat(), self.fitted_days[1].isoformat()]
            ),
            "collocation_digest": self.collocation_digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GosatFit":
        """Inverse of to_dict; refuses a dict whose fit_id does not match its contents."""

        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        days = data.get("fitted_days")
        try:
            fit = cls(
                intercept=float(data["intercept"]),
                slope=float(data["slope"]),
                n_collocations=int(data["n_collocations"]),
                rmse=number(data.get("rmse")),
                r2=number(data.get("r2")),
                method=str(data["method"]),
                fitted_days=(
                    None if days is None
                    else (_as_date(days[0]), _as_date(days[1]))
                ),
                intercept_se=number(data.get("intercept_se")),
                slope_se=number(data.get("slope_se")),
                n_independent=float(data.get("n_independent", 0.0)),
                error_ratio=number(data.get("error_ratio")),
                collocation_digest=str(data.get("collocation_digest", "")),
            )
        except KeyError as exc:
            raise ValueError(f"GosatFit.from_dict: missing key {exc.args[0]!r}") from None
        if "fit_id" in data and data["fit_id"] != fit.fit_id:
            raise ValueError(f"GosatFit.from_dict: fit_id {data['fit_id']!r} does not match the fit's "
                             f"contents ({fit.fit_id}); the stored fit was edited or damaged")
        return fit


def _as_date(value: Any) -> date:
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, datetime):
        # datetime is a date subclass; keep only the day.
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _empty_collocations() -> pd.DataFrame:
    dtypes = {"day": "object", "sounding": "int64", "gosat": "float64", "gosat_uncertainty": "float64",
              "oco": "float64", "oco_uncertainty": "float64", "oco_weight": "float64", "oco_cells": "int64",
              "weight": "float64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in COLLOCATION_COLUMNS})


def collocations(
    oco_cells_by_day: Mapping[date, pd.DataFrame],
    gosat_footprints_by_day: Mapping[date, pd.DataFrame],
    grid: Grid | None = None,
    radius_deg: float = COLLOCATION_RADIUS_DEG,
) -> pd.DataFrame:
    """One row per GOSAT sounding with OCO cells (merged OCO) of the same day inside its footprint
    or, with the `grid` the cells are numbered on, within `radius_deg` of it (its cells' centres).

    `gosat_footprints_by_day`: per day, the GOSAT soundings' footprints on the grid (columns
    FOOTPRINT_COLUMNS: one row per sounding and covered cell, weight = 1 / cells the sounding
    covers). Columns: day; sounding; gosat and gosat_uncertainty (the sounding's, ppm); oco, the
    inverse-variance mean of the OCO cells inside the footprint, and oco_uncertainty, that
    mean's 1 sigma taking each independent OCO sounding as one draw (cells of one OCO sounding
    share its error): rms(cell sigma) / sqrt(max(oco_weight, 1)); oco_weight, the independent
    OCO soundings inside; oco_cells, their cells; weight, the GOSAT sounding's share inside the
    grid (1 unless the region's edge cuts it). Sorted by day then sounding.
    """
    pieces = []
    for day in sorted(set(oco_cells_by_day) & set(gosat_footprints_by_day)):
        oco = _cells(oco_cells_by_day[day], f"collocations(oco, {day})")
        footprints = gosat_footprints_by_day[day]
        missing = [c for c in FOOTPRINT_COLUMNS if c not in footprints.columns]
        if missing:
            raise ValueError(f"collocations(gosat, {day}): footprint table lacks column(s) {missing}")
        if len(oco) == 0 or len(footprints) == 0:
            continue
        share = footprints.groupby("sounding")["weight"].sum()
        inside = (_near(footprints, oco, grid, radius_deg) if grid is not None and radius_deg > 0 else
                  footprints[["sounding", "cell", "xco2", "xco2_uncertainty"]].merge(
                      oco[["cell", "xco2", "xco2_uncertainty", "weight"]], on="cell", how="inner",
                      suffixes=("_gosat", "_oco")))
        if len(inside) == 0:
            continue
        inverse_variance = 1.0 / inside["xco2_uncertainty_oco"].to_numpy(np.float64) ** 2
        inside = inside.assign(w=inverse_variance, wx=inverse_variance * inside["xco2_oco"].to_numpy(np.float64),
                               u2=inside["xco2_uncertainty_oco"].to_numpy(np.float64) ** 2)
        per = inside.groupby("sounding").agg(
            gosat=("xco2_gosat", "first"), gosat_uncertainty=("xco2_uncertainty_gosat", "first"),
            w=("w", "sum"), wx=("wx", "sum"), u2=("u2", "mean"), oco_weight=("weight", "sum"),
            oco_cells=("cell", "size"))
        pieces.append(pd.DataFrame({
            "day": [day] * len(per),
            "sounding": per.index.to_numpy(np.int64),
            "gosat": per["gosat"].to_numpy(np.float64),
            "gosat_uncertainty": per["gosat_uncertainty"].to_numpy(np.float64),
            "oco": (per["wx"] / per["w"]).to_numpy(np.float64),
            "oco_uncertainty": np.sqrt(per["u2"] / np.maximum(per["oco_weight"], 1.0)).to_numpy(np.float64),
            "oco_weight": per["oco_weight"].to_numpy(np.float64),
            "oco_cells": per["oco_cells"].to_numpy(np.int64),
            "weight": share.reindex(per.index).to_numpy(np.float64),
        }))
    if not pieces:
        return _empty_collocations()
    return pd.concat(pieces, ignore_index=True).sort_values(["day", "sounding"], ignore_index=True)


def _near(footprints: pd.DataFrame, oco: pd.DataFrame, grid: Grid, radius_deg: float) -> pd.DataFrame:
    """Each sounding's OCO cells of the day within `radius_deg` of one of its footprint's cells (as
    the inside-footprint merge: one row per sounding and OCO cell, suffixes _gosat and _oco)."""
    from scipy.spatial import cKDTree

    rows, cols = grid.cell_rowcol(oco["cell"].to_numpy())
    lat, lon = grid.centre(rows, cols)
    # Degrees of longitude shrink with latitude: distances in degrees of latitude.
    squeeze = math.cos(math.radians(float(np.mean(lat))))
    tree = cKDTree(np.column_stack([np.asarray(lon) * squeeze, lat]))
    f_rows, f_cols = grid.cell_rowcol(footprints["cell"].to_numpy())
    f_lat, f_lon = grid.centre(f_rows, f_cols)
    reach = radius_deg + 0.5 * grid.step  # a cell whose centre is within the radius of the footprint's edge
    hits = tree.query_ball_point(np.column_stack([np.asarray(f_lon) * squeeze, f_lat]), reach)
    sounding = footprints["sounding"].to_numpy()
    pairs = pd.DataFrame({"sounding": np.repeat(sounding, [len(h) for h in hits]),
                          "oco_row": np.concatenate([np.asarray(h, np.int64) for h in hits]) if len(hits) else
                          np.empty(0, np.int64)}).drop_duplicates()
    gosat = footprints.groupby("sounding")[["xco2", "xco2_uncertainty"]].first().add_suffix("_gosat")
    near = oco[["cell", "xco2", "xco2_uncertainty", "weight"]].rename(
        columns={"xco2": "xco2_oco", "xco2_uncertainty": "xco2_uncertainty_oco"}).reset_index(drop=True)
    out = pairs.join(near, on="oco_row").join(gosat, on="sounding")
    return out[["sounding", "cell", "xco2_gosat", "xco2_uncertainty_gosat", "xco2_oco", "xco2_uncertainty_oco",
                "weight"]].reset_index(drop=True)


def collocation_digest(collocations: pd.DataFrame) -> str:
    """A stable hash of the collocation set (day, sounding and both values)."""
    if len(collocations) == 0:
        return ""
    h = hashlib.sha256()
    for row in collocations[["day", "sounding", "gosat", "oco"]].itertuples(index=False):
        h.update(f"{_as_date(row.day).isoformat()}|{int(row.sounding)}|{row.gosat:.6f}|{row.oco:.6f};".encode())
    return h.hexdigest()[:16]


def deming(x: np.ndarray, y: np.ndarray, error_ratio: float) -> tuple[float, float]:
    """(intercept, slope) of the Deming line y = a + b x; error_ratio = var(y errors) / var(x errors).

    Unlike least squares of y on x, errors in x do not pull the slope towards 0."""
    x0, y0 = float(np.mean(x)), float(np.mean(y))
    dx, dy = x - x0, y - y0
    sxx, syy, sxy = float(np.mean(dx * dx)), float(np.mean(dy * dy)), float(np.mean(dx * dy))
    slope = _deming_slope(sxx, syy, sxy, error_ratio)
    return y0 - slope * x0, slope


@overload
def _deming_slope(sxx: float, syy: float, sxy: float, delta: float) -> float: ...
@overload
def _deming_slope(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, delta: float) -> np.ndarray: ...
def _deming_slope(sxx: float | np.ndarray, syy: float | np.ndarray, sxy: float | np.ndarray,
                  delta: float) -> float | np.ndarray:
    # Vectorised over the jackknife's leave-one-out moments as well as for one set.
    spread = syy - delta * sxx
    with np.errstate(divide="ignore", invalid="ignore"):
        return (spread + np.sqrt(spread * spread + 4.0 * delta * sxy * sxy)) / (2.0 * sxy)


def _jackknife_deming(x: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, float]:
    """Jackknife standard errors (intercept, slope) of the Deming line, in one vectorised pass."""
    n = len(x)
    # Centred first: ~400 ppm magnitudes would swamp the moments' differences.
    x0, y0 = float(x.mean()), float(y.mean())
    x = x - x0
    y = y - y0
    m = n - 1
    mx = (x.sum() - x) / m
    my = (y.sum() - y) / m
    sxx = (np.sum(x * x) - x * x) / m - mx * mx
    syy = (np.sum(y * y) - y * y) / m - my * my
    sxy = (np.sum(x * y) - x * y) / m - mx * my
    slopes = _deming_slope(sxx, syy, sxy, delta)
    intercepts = (y0 + my) - slopes * (x0 + mx)
    factor = (n - 1) / n
    slope_se = math.sqrt(factor * float(np.sum((slopes - slopes.mean()) ** 2)))
    intercept_se = math.sqrt(factor * float(np.sum((intercepts - intercepts.mean()) ** 2)))
    return intercept_se, slope_se


def fit_gosat_to_oco(
    collocations: pd.DataFrame,
    min_soundings: float = MIN_SOUNDINGS_FOR_SLOPE,
    slope_bounds: tuple[float, float] | None = DEFAULT_SLOPE_BOUNDS,
) -> GosatFit:
    """Step 2: fit oco = intercept + slope * gosat on the collocated GOSAT soundings.

    Counts are in independent soundings (the collocations' `weight`, 1 per whole footprint).
    Deming regression with at least `min_soundings`, the error-variance ratio taken from the
    reported uncertainties (1 where they are missing); with fewer (but at least 3), or when
    GOSAT barely varies beyond its errors, or when the slope falls outside `slope_bounds`
    (None disables that check), slope 1 and intercept mean(oco - gosat) ('offset'); with fewer
    than 3, the identity.
    """
    if min_soundings < 3:
        raise ValueError(f"min_soundings must be at least 3, got {min_soundings}")
    missing = [c for c in ("day", "sounding", "gosat", "oco") if c not in collocations.columns]
    if missing:
        raise ValueError(f"fit_gosat_to_oco: collocations lack column(s) {missing}")

    data = collocations.copy()
    for column, default in (("weight", 1.0), ("gosat_uncertainty", math.nan), ("oco_uncertainty", math.nan)):
        if column not in data.columns:
            data[column] = default
    usable = (np.isfinite(data["gosat"].to_numpy(np.float64)) & np.isfinite(data["oco"].to_numpy(np.float64))
              & (data["weight"].to_numpy(np.float64) > 0))
    data = data.loc[usable].reset_index(drop=True)
    gosat = data["gosat"].to_numpy(np.float64)
    oco = data["oco"].to_numpy(np.float64)
    fitted_days = (_as_date(data["day"].min()), _as_date(data["day"].max())) if len(data) else None
    n = len(gosat)
    n_independent = float(data["weight"].sum())
    digest = collocation_digest(data)
    gosat_var_err = _mean_square(data["gosat_uncertainty"].to_numpy(np.float64))
    oco_var_err = _mean_square(data["oco_uncertainty"].to_numpy(np.float64))
    error_ratio = oco_var_err / gosat_var_err if gosat_var_err > 0 and math.isfinite(oco_var_err) else 1.0

    def result(intercept: float, slope: float, method: str, intercept_se: float, slope_se: float) -> GosatFit:
        rmse, r2 = _goodness(oco, intercept + slope * gosat)
        return GosatFit(float(intercept), float(slope), n, rmse, r2, method, fitted_days,
                        float(intercept_se), float(slope_se), n_independent,
                        error_ratio if method == "deming" else math.nan, digest)

    if n < 3 or n_independent < 3:
        log.info("GOSAT fit: %.1f independent collocated soundings, using GOSAT as is", n_independent)
        return GosatFit(0.0, 1.0, n, *_goodness(oco, gosat), "identity", fitted_days,
                        math.nan, math.nan, n_independent, math.nan, digest)

    difference = oco - gosat
    offset = float(np.mean(difference))
    offset_se = float(np.std(difference, ddof=1) / math.sqrt(n))

    def offset_only(why: str) -> GosatFit:
        log.warning("GOSAT fit: %s over %.1f independent soundings; offset %.3f +- %.3f ppm only",
                    why, n_independent, offset, offset_se)
        return result(offset, 1.0, "offset", offset_se, 0.0)

    if n_independent < min_soundings:
        return offset_only(f"fewer than {min_soundings:g} soundings for a slope")
    spread = float(np.std(gosat))
    signal = spread**2 - (gosat_var_err if math.isfinite(gosat_var_err) else 0.0)
    if spread < MIN_GOSAT_SPREAD_PPM or (
            math.isfinite(gosat_var_err) and signal < MIN_GOSAT_SIGNAL_TO_NOISE * gosat_var_err):
        return offset_only(f"GOSAT spread {spread:.3g} ppm too small against its errors for a slope")

    intercept, slope = deming(gosat, oco, error_ratio)
    if not math.isfinite(slope) or (slope_bounds is not None and not (slope_bounds[0] <= slope <= slope_bounds[1])):
        return offset_only(f"Deming slope {slope:.3f} outside {slope_bounds}")
    intercept_se, slope_se = _jackknife_deming(gosat, oco, error_ratio)
    return result(intercept, slope, "deming", intercept_se, slope_se)


def _mean_square(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite**2)) if len(finite) == len(values) and len(values) else math.nan


def _goodness(observed: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    if len(observed) == 0:
        return math.nan, math.nan
    residual = observed - predicted
    rmse = float(np.sqrt(np.mean(residual**2)))
    total = float(np.sum((observed - observed.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if len(observed) >= 2 and total > 0 else math.nan
    return rmse, r2


def fuse_day(
    oco_cells: pd.DataFrame | None, gosat_cells: pd.DataFrame | None, fit: GosatFit
) -> pd.DataFrame:
    """The fused training target of one day: OCO where OCO observes, mapped GOSAT elsewhere.

    `oco_cells` is the merged OCO day (`merge_oco`); its source labels are kept (a table
    without a source column is labelled 'oco'), its fit_id is ''. GOSAT cells OCO did not
    observe are mapped with `fit` ("GO"), their uncertainty scaled by |slope|, labelled 'gosat'
    and stamped with `fit.fit_id`; each cell keeps its weight. Sorted by cell.
    """
    oco = _cells(oco_cells, "fuse_day(oco_cells)")
    if oco_cells is not None and len(oco):  # _cells is empty for None
        oco["source"] = (
            oco_cells["source"].to_numpy() if "source" in oco_cells.columns else "oco"
        )
        oco["fit_id"] = NO_FIT_ID
    gosat = _cells(gosat_cells, "fuse_day(gosat_cells)")
    gosat = gosat.loc[~gosat["cell"].isin(oco["cell"])].copy()
    gosat["xco2"] = fit.apply(gosat["xco2"].to_numpy())
    gosat["xco2_uncertainty"] = gosat["xco2_uncertainty"].to_numpy() * abs(fit.slope)
    gosat["source"] = "gosat"
    gosat["fit_id"] = fit.fit_id
    parts = [p for p in (oco, gosat) if len(p)]
    if not parts:
        return empty_fused()
    return _finish(pd.concat(parts, ignore_index=True))
