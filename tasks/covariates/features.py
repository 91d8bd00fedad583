"""The feature vector of one cell-day (the paper's step 3) and its assembly.

The table `FEATURES` is the single source of truth for names, sources, units and preprocessing;
docs/configuration.md's feature table is generated from it (`xco2 features`). Changing the list or any
preprocessing means a new `FEATURE_SET_VERSION`, stored with every sample and every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from tasks.gridding.plausibility import LANDCOVER_CLASSES

FEATURE_SET_VERSION = "fs1-46"

# Neighbourhood windows (cells; one cell ~ 1 km): the paper's "spatial convolution".
SCALES_KM = (5, 25, 75, 150)


@dataclass(frozen=True)
class Feature:
    name: str
    source: str
    unit: str
    preprocessing: str
    kind: str  # 'static' (per cell), 'ndvi' (per cell-day), 'meteo' (per cell-day), 'time', 'location'


def _static_features() -> list[Feature]:
    out = [Feature("elevation_m", "SRTM/NASADEM", "m", "area-weighted mean to the cell", "static")]
    out += [
        Feature(f"elevation_mean_{k}km", "SRTM/NASADEM", "m", f"mean over a {k} km window", "static")
        for k in SCALES_KM
    ]
    out.append(Feature("slope_deg", "SRTM/NASADEM", "degree", "gradient of the gridded elevation", "static"))
    out.append(Feature("elevation_std_25km", "SRTM/NASADEM", "m", "std over a 25 km window (roughness)", "static"))
    out.append(Feature("population_log", "SEDAC GPW", "log(1 + people/km2)", "area-weighted mean, then log1p", "static"))
    out += [
        Feature(f"population_log_mean_{k}km", "SEDAC GPW", "log(1 + people/km2)", f"mean over a {k} km window", "static")
        for k in SCALES_KM
    ]
    out += [
        Feature(f"landcover_{c}_frac", "ESA CCI land cover", "fraction", "area fraction of the class in the cell", "static")
        for c in LANDCOVER_CLASSES
    ]
    out += [
        Feature(f"landcover_{c}_frac_mean_25km", "ESA CCI land cover", "fraction", "mean over a 25 km window", "static")
        for c in LANDCOVER_CLASSES
    ]
    out += [
        Feature(f"landcover_{c}_frac_mean_75km", "ESA CCI land cover", "fraction", "mean over a 75 km window", "static")
        for c in ("cropland", "forest", "urban")
    ]
    return out


def _ndvi_features() -> list[Feature]:
    out = [Feature("ndvi", "MODIS MOD13Q1/MYD13Q1", "1", "area-weighted mean; 16-day composites interpolated to the day", "ndvi")]
    out += [
        Feature(f"ndvi_mean_{k}km", "MODIS MOD13Q1/MYD13Q1", "1", f"mean over a {k} km window", "ndvi")
        for k in SCALES_KM
    ]
    return out


METEO_VARIABLES = (
    ("evaporation_mm", "mm", "daily sum of hourly steps 01 UTC..00 UTC(+1), sign flipped, bilinear"),
    ("precipitation_mm", "mm", "daily sum of hourly steps 01 UTC..00 UTC(+1), bilinear"),
    ("surface_pressure_hpa", "hPa", "daily mean, bilinear"),
    ("relative_humidity_pct", "%", "daily mean of RH from t2m and d2m (Magnus), bilinear"),
    ("sunshine_duration_h", "h", "daily sum of hourly steps 01 UTC..00 UTC(+1), bilinear"),
    ("temperature_c", "degC", "daily mean of t2m, bilinear"),
    ("wind_speed_ms", "m/s", "daily mean of hourly |(u10, v10)|, bilinear"),
)


def _meteo_features() -> list[Feature]:
    return [Feature(n, "ERA5 single levels", u, p, "meteo") for n, u, p in METEO_VARIABLES]


def _time_location_features() -> list[Feature]:
    return [
        Feature("latitude", "grid", "degree", "cell centre", "location"),
        Feature("longitude", "grid", "degree", "cell centre", "location"),
        Feature("years_since_2015", "calendar", "year", "(day - 2015-01-01) / 365.25", "time"),
        Feature("doy_sin", "calendar", "1", "sin(2 pi day-of-year / 365.25)", "time"),
        Feature("doy_cos", "calendar", "1", "cos(2 pi day-of-year / 365.25)", "time"),
    ]


FEATURES: tuple[Feature, ...] = tuple(
    _static_features() + _ndvi_features() + _meteo_features() + _time_location_features()
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
STATIC_NAMES = tuple(f.name for f in FEATURES if f.kind == "static")
NDVI_NAMES = tuple(f.name for f in FEATURES if f.kind == "ndvi")
METEO_NAMES = tuple(f.name for f in FEATURES if f.kind == "meteo")
assert len(FEATURES) == 46, len(FEATURES)


def time_features(day: date) -> dict[str, float]:
    years = (day - date(2015, 1, 1)).days / 365.25
    angle = 2 * np.pi * day.timetuple().tm_yday / 365.25
    return {"years_since_2015": years, "doy_sin": float(np.sin(angle)), "doy_cos": float(np.cos(angle))}


def feature_table_markdown() -> str:
    lines = ["| # | name | source | unit | preprocessing |", "|---|---|---|---|---|"]
    for i, f in enumerate(FEATURES, 1):
        lines.append(f"| {i} | `{f.name}` | {f.source} | {f.unit} | {f.preprocessing} |")
    return "\n".join(lines)


@dataclass
class DayLayers:
    """Everything needed to build the feature vectors of any cell on one day.

    `static` is [n_static, ny, nx] (a memory map), `ndvi` is [n_ndvi, ny, nx], `meteo` is
    [n_meteo, ny, nx]; lat/lon come from the grid, time features are scalars.
    """

    day: date
    static: np.ndarray
    ndvi: np.ndarray
    meteo: np.ndarray
    lats: np.ndarray
    lons: np.ndarray

    def for_cells(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Feature matrix [n, 46] float32 in FEATURE_NAMES order."""
        n = len(rows)
        out = np.empty((n, len(FEATURES)), dtype=np.float32)
        i = 0
        for block in (self.static, self.ndvi, self.meteo):
            k = block.shape[0]
            out[:, i : i + k] = block[:, rows, cols].T
            i += k
        out[:, i] = self.lats[rows]
        out[:, i + 1] = self.lons[cols]
        t = time_features(self.day)
        out[:, i + 2] = t["years_since_2015"]
        out[:, i + 3] = t["doy_sin"]
        out[:, i + 4] = t["doy_cos"]
        return out

    def for_rows(self, row_start: int, row_stop: int) -> np.ndarray:
        """Feature matrix of every cell in rows [row_start, row_stop), row-major.

        Slices instead of gathering: a contiguous block of rows is the hot path of inference.
        """
        nx = self.lons.shape[0]
        n = (row_stop - row_start) * nx
        out = np.empty((n, len(FEATURES)), dtype=np.float32)
        i = 0
        for block in (self.static, self.ndvi, self.meteo):
            k = block.shape[0]
            out[:, i : i + k] = np.asarray(block[:, row_start:row_stop, :]).reshape(k, n).T
            i += k
        out[:, i] = np.repeat(self.lats[row_start:row_stop], nx)
        out[:, i + 1] = np.tile(self.lons, row_stop - row_start)
        t = time_features(self.day)
        out[:, i + 2] = t["years_since_2015"]
        out[:, i + 3] = t["doy_sin"]
        out[:, i + 4] = t["doy_cos"]
        return out
