"""The soundings table every reader returns and every later step consumes.

One row per sounding (good and bad alike, so `xco2 inspect` can describe a whole file):

| column                 | dtype               | meaning                                         |
|------------------------|---------------------|-------------------------------------------------|
| time                   | datetime64[ns, UTC] | observation time                                |
| latitude, longitude    | float64             | footprint centre, degrees                       |
| xco2                   | float64             | ppm (NaN where the file held a fill value)      |
| xco2_uncertainty       | float64             | ppm, 1 sigma (NaN where filled)                 |
| quality_flag           | int8                | 0 good, anything else bad                       |
| footprint              | int16               | OCO footprint 1-8; 0 for GOSAT                  |
| source                 | str                 | 'oco2', 'oco3' or 'gosat'                       |
| vertex_latitude_0..3   | float64             | OCO footprint corners (NaN for GOSAT)           |
| vertex_longitude_0..3  | float64             |                                                 |
| footprint_diameter_km  | float64             | circular footprints (GOSAT 10.5); NaN for OCO   |
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.grid import Grid

SOURCES = ("oco2", "oco3", "gosat")
VERTEX_LAT = [f"vertex_latitude_{i}" for i in range(4)]
VERTEX_LON = [f"vertex_longitude_{i}" for i in range(4)]
COLUMNS = (
    ["time", "latitude", "longitude", "xco2", "xco2_uncertainty", "quality_flag", "footprint",
     "source"]
    + VERTEX_LAT
    + VERTEX_LON
    + ["footprint_diameter_km"]
)

# Physically possible column-mean CO2 in ppm; anything outside is a retrieval failure.
PLAUSIBLE_XCO2_PPM = (330.0, 480.0)


def empty_soundings() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS})
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    df["quality_flag"] = df["quality_flag"].astype("int8")
    df["footprint"] = df["footprint"].astype("int16")
    df["source"] = df["source"].astype("object")
    return df


def good_soundings(df: pd.DataFrame) -> pd.DataFrame:
    """Quality flag 0, finite values in the plausible range, positive uncertainty."""
    lo, hi = PLAUSIBLE_XCO2_PPM
    keep = (
        (df["quality_flag"] == 0)
        & np.isfinite(df["xco2"])
        & df["xco2"].between(lo, hi)
        & np.isfinite(df["xco2_uncertainty"])
        & (df["xco2_uncertainty"] > 0)
    )
    return df.loc[keep]


def in_region(df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    return df.loc[grid.contains(df["latitude"].to_numpy(), df["longitude"].to_numpy())]


def usable_soundings(df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """What gridding consumes: good soundings whose centre lies in the region."""
    return in_region(good_soundings(df), grid).reset_index(drop=True)
