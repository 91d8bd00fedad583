"""Solar geometry good to a degree or so: enough for daylight, sunshine and zenith angles."""

from __future__ import annotations

import numpy as np


def declination_deg(doy: np.ndarray | float) -> np.ndarray:
    return 23.44 * np.sin(2 * np.pi * (284.0 + np.asarray(doy, dtype=np.float64)) / 365.25)


def local_solar_hour(utc_hour: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    return np.mod(np.asarray(utc_hour) + np.asarray(lon) / 15.0, 24.0)


def solar_elevation_deg(doy: np.ndarray | float, utc_hour: np.ndarray | float, lat: np.ndarray | float,
                        lon: np.ndarray | float) -> np.ndarray:
    """Elevation of the sun above the horizon; arguments broadcast."""
    dec = np.radians(declination_deg(doy))
    hour_angle = np.radians(15.0 * (local_solar_hour(utc_hour, lon) - 12.0))
    la = np.radians(np.asarray(lat, dtype=np.float64))
    s = np.sin(la) * np.sin(dec) + np.cos(la) * np.cos(dec) * np.cos(hour_angle)
    return np.degrees(np.arcsin(np.clip(s, -1.0, 1.0)))
