"""The paper's fusion of gridded satellite days into one training target ("Data Processing and
Fusion", steps 1-2).

1. OCO-2 and OCO-3 share a retrieval algorithm, so where both observe a cell on a day their
   values are simply averaged (`merge_oco`).
2. GOSAT uses a different algorithm, so it is first mapped onto the OCO scale by a linear model
   fitted on the cell-days both observe, GOSAT as the independent variable and OCO as the
   dependent one (`collocations`, `fit_gosat_to_oco`). The mapped GOSAT cells ("GO") fill the
   cells OCO did not observe (`fuse_day`).

Every fused cell keeps a `source` label ('oco2', 'oco3', 'oco2+oco3' or 'gosat') so training
and evaluation can tell measured OCO cells from mapped GOSAT ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tasks.gridding import CELL_COLUMNS, CELL_DTYPES

log = logging.getLogger(__name__)

FUSED_COLUMNS = CELL_COLUMNS + ["source"]
FUSED_DTYPES = {**CELL_DTYPES, "source": "str"}
COLLOCATION_COLUMNS = ["day", "cell", "gosat", "oco"]
FIT_METHODS = ("ols", "offset", "identity")

# Below this spread of GOSAT values (ppm) the slope is undetermined: a plain offset is fitted.
MIN_GOSAT_SPREAD_PPM = 0.01
# Two instruments measuring the same column should agree to within a few percent in scale; an
# OLS slope outside these bounds means noise dominated the fit (errors in GOSAT attenuate the
# slope towards 0 when the collocations span too narrow a range), so the offset is used instead.
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
    n_soundings the sum and source 'oco2+oco3'; elsewhere the single source's cell is kept.
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
        "source": np.where(overlap, "oco2+oco3", np.where(has2, "oco2", "oco3")),
    })
    return _finish(merged)


@dataclass(frozen=True)
class GosatFit:
    """The linear map of GOSAT onto the OCO scale: oco = intercept + slope * gosat.

    `method` says how it was obtained: 'ols' (least squares on the collocations), 'offset'
    (slope fixed at 1, too few or too poorly spread collocations for a slope) or 'identity'
    (fewer than 3 collocations: GOSAT used as is). rmse and r2 describe the fitted map on the
    collocations (NaN where there were too few to say). fitted_days is the (first, last) day of
    the collocations, None when there were none.
    """

    intercept: float
    slope: float
    n_collocations: int
    rmse: float
    r2: float
    method: str
    fitted_days: tuple[date, date] | None = None

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

    def apply(self, gosat_xco2: np.ndarray | float) -> np.ndarray:
        """GOSAT xco2 (ppm) mapped onto the OCO scale (ppm)."""
        return self.intercept + self.slope * np.asarray(gosat_xco2, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: days as ISO strings, NaN as None."""

        def number(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None

        return {
            "intercept": float(self.intercept),
            "slope": float(self.slope),
            "n_collocations": int(self.n_collocations),
            "rmse": number(self.rmse),
            "r2": number(self.r2),
            "method": self.method,
            "fitted_days": (
                None if self.fitted_days is None
                else [self.fitted_days[0].isoformat(), self.fitted_days[1].isoformat()]
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GosatFit":
        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        days = data.get("fitted_days")
        try:
            return cls(
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
            )
        except KeyError as exc:
            raise ValueError(f"GosatFit.from_dict: missing key {exc.args[0]!r}") from None


def _as_date(value: Any) -> date:
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, date):
        # datetime is a date subclass; keep only the day.
        return value if type(value) is date else value.date()
    return date.fromisoformat(str(value))


def collocations(
    oco_cells_by_day: Mapping[date, pd.DataFrame],
    gosat_cells_by_day: Mapping[date, pd.DataFrame],
) -> pd.DataFrame:
    """The cell-days observed by both OCO (merged) and GOSAT: columns day, cell, gosat, oco
    (xco2 in ppm), sorted by day then cell."""
    pieces = []
    for day in sorted(set(oco_cells_by_day) & set(gosat_cells_by_day)):
        oco = _cells(oco_cells_by_day[day], f"collocations(oco, {day})")
        gosat = _cells(gosat_cells_by_day[day], f"collocations(gosat, {day})")
        both = gosat[["cell", "xco2"]].merge(
            oco[["cell", "xco2"]], on="cell", how="inner", suffixes=("_gosat", "_oco")
        )
        if len(both):
            pieces.append(pd.DataFrame({
                "day": [day] * len(both),
                "cell": both["cell"].to_numpy(np.int64),
                "gosat": both["xco2_gosat"].to_numpy(np.float64),
                "oco": both["xco2_oco"].to_numpy(np.float64),
            }))
    if not pieces:
        return pd.DataFrame({
            "day": pd.Series(dtype="object"),
            "cell": pd.Series(dtype="int64"),
            "gosat": pd.Series(dtype="float64"),
            "oco": pd.Series(dtype="float64"),
        })
    return pd.concat(pieces, ignore_index=True).sort_values(["day", "cell"], ignore_index=True)


def fit_gosat_to_oco(
    collocations: pd.DataFrame,
    min_collocations: int = 30,
    slope_bounds: tuple[float, float] | None = DEFAULT_SLOPE_BOUNDS,
) -> GosatFit:
    """Step 2: fit oco = intercept + slope * gosat on the collocated cell-days.

    OLS with at least `min_collocations` collocations; with fewer (but at least 3), or when
    GOSAT barely varies, or when the OLS slope falls outside `slope_bounds` (None disables that
    check), slope 1 and intercept mean(oco - gosat) ('offset'); with fewer than 3, the identity.

    Note that one GOSAT sounding fills ~80 cells, so collocations are not independent samples:
    n_collocations counts cell-days, which overstates the information in the fit.
    """
    if min_collocations < 3:
        raise ValueError(f"min_collocations must be at least 3, got {min_collocations}")
    missing = [c for c in COLLOCATION_COLUMNS if c not in collocations.columns]
    if missing:
        raise ValueError(f"fit_gosat_to_oco: collocations lack column(s) {missing}")

    gosat = collocations["gosat"].to_numpy(np.float64)
    oco = collocations["oco"].to_numpy(np.float64)
    usable = np.isfinite(gosat) & np.isfinite(oco)
    gosat, oco = gosat[usable], oco[usable]
    days = collocations.loc[usable, "day"]
    fitted_days = (_as_date(days.min()), _as_date(days.max())) if len(days) else None
    n = len(gosat)

    def result(intercept: float, slope: float, method: str) -> GosatFit:
        rmse, r2 = _goodness(oco, intercept + slope * gosat)
        return GosatFit(float(intercept), float(slope), n, rmse, r2, method, fitted_days)

    if n < 3:
        log.info("GOSAT fit: %d collocation(s), using GOSAT as is", n)
        return result(0.0, 1.0, "identity")

    offset = float(np.mean(oco - gosat))
    if n < min_collocations:
        log.info("GOSAT fit: %d < %d collocations, fitting an offset only", n, min_collocations)
        return result(offset, 1.0, "offset")

    gosat_mean = gosat.mean()
    spread = float(np.sqrt(np.mean((gosat - gosat_mean) ** 2)))
    if spread < MIN_GOSAT_SPREAD_PPM:
        log.warning("GOSAT fit: GOSAT spread %.3g ppm is too small for a slope; offset only",
                    spread)
        return result(offset, 1.0, "offset")

    slope = float(np.sum((gosat - gosat_mean) * (oco - oco.mean()))
                  / np.sum((gosat - gosat_mean) ** 2))
    intercept = float(oco.mean() - slope * gosat_mean)
    if slope_bounds is not None and not (slope_bounds[0] <= slope <= slope_bounds[1]):
        log.warning("GOSAT fit: OLS slope %.3f outside %s over %d collocations; offset only",
                    slope, slope_bounds, n)
        return result(offset, 1.0, "offset")
    return result(intercept, slope, "ols")


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
    without a source column is labelled 'oco'). GOSAT cells OCO did not observe are mapped with
    `fit` ("GO"), their uncertainty scaled by |slope|, and labelled 'gosat'. Sorted by cell.
    """
    oco = _cells(oco_cells, "fuse_day(oco_cells)")
    if len(oco):
        oco["source"] = (
            oco_cells["source"].to_numpy() if "source" in oco_cells.columns else "oco"
        )
    gosat = _cells(gosat_cells, "fuse_day(gosat_cells)")
    gosat = gosat.loc[~gosat["cell"].isin(oco["cell"])].copy()
    gosat["xco2"] = fit.apply(gosat["xco2"].to_numpy())
    gosat["xco2_uncertainty"] = gosat["xco2_uncertainty"].to_numpy() * abs(fit.slope)
    gosat["source"] = "gosat"
    parts = [p for p in (oco, gosat) if len(p)]
    if not parts:
        return empty_fused()
    return _finish(pd.concat(parts, ignore_index=True))
