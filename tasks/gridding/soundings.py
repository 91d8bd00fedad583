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

import logging
from datetime import date

import numpy as np
import pandas as pd

from tasks.gridding import plausibility
from tasks.gridding.geometry import Grid

log = logging.getLogger(__name__)

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
PLAUSIBLE_XCO2_PPM = (plausibility.XCO2_PPM.low, plausibility.XCO2_PPM.high)
# Why a sounding is not used, in the order they are judged (each is counted under the first).
DROP_REASONS = ("latitude", "longitude", "time", "quality_flag", "xco2", "xco2_uncertainty")


def _usable_masks(df: pd.DataFrame, day: date | None) -> dict[str, np.ndarray]:
    """Per reason, the soundings that pass it."""
    times = df["time"]
    in_time = times.notna().to_numpy().copy()
    if day is not None:
        slack = pd.Timedelta(days=plausibility.SOUNDING_DAY_SLACK_DAYS)
        start = pd.Timestamp(day, tz="UTC")
        in_time &= ((times >= start - slack) & (times < start + pd.Timedelta(days=1) + slack)).to_numpy()
    uncertainty = df["xco2_uncertainty"].to_numpy(np.float64)
    return {
        "latitude": plausibility.inside(df["latitude"], plausibility.LATITUDE),
        "longitude": plausibility.inside(df["longitude"], plausibility.LONGITUDE),
        "time": in_time,
        "quality_flag": (df["quality_flag"] == 0).to_numpy(),
        "xco2": plausibility.inside(df["xco2"], plausibility.XCO2_PPM),
        "xco2_uncertainty": plausibility.inside(uncertainty, plausibility.XCO2_UNCERTAINTY_PPM) & (uncertainty > 0),
    }


def screen_soundings(df: pd.DataFrame, day: date | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """(usable soundings, how many were dropped for each reason in DROP_REASONS).

    Each sounding is judged alone: quality flag 0, a possible position, a time (within a day
    of `day` when given: a daily granule holds that day), XCO2 and its uncertainty in their
    plausible ranges (tasks.gridding.plausibility)."""
    keep = np.ones(len(df), dtype=bool)
    dropped = {}
    for reason, passes in _usable_masks(df, day).items():
        dropped[reason] = int((keep & ~passes).sum())
        keep &= passes
    return df.loc[keep], dropped


def good_soundings(df: pd.DataFrame, day: date | None = None) -> pd.DataFrame:
    """Quality flag 0, finite values in their plausible ranges, positive uncertainty."""
    return screen_soundings(df, day)[0]


def in_region(df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    return df.loc[grid.contains(df["latitude"].to_numpy(), df["longitude"].to_numpy())]


def describe_dropped(dropped: dict[str, int], total: int) -> str:
    shown = ", ".join(f"{reason} {n}" for reason, n in dropped.items() if n)
    return f"dropped {sum(dropped.values())} of {total} soundings ({shown or 'none'})"


def usable_soundings(df: pd.DataFrame, grid: Grid, day: date | None = None, label: str | None = None
                     ) -> pd.DataFrame:
    """What gridding consumes: good soundings whose centre lies in the region. With a `label`
    (the granule's name) the drops are logged per reason: flagged soundings are routine, an
    impossible value in a sounding flagged good is a warning."""
    good, dropped = screen_soundings(df, day)
    if label is not None:
        implausible = any(n for reason, n in dropped.items() if reason != "quality_flag")
        log.log(logging.WARNING if implausible else logging.INFO, "%s: %s", label, describe_dropped(dropped, len(df)))
    return in_region(good, grid).reset_index(drop=True)
