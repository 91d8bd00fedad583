"""Ground tracks of OCO-2 (sun-synchronous, 16-day repeat), GOSAT (3-day repeat) and the ISS
(OCO-3: 51.6 degrees, precessing), and the footprint geometry laid along them.

A circular orbit over a rotating Earth is enough: latitude = asin(sin i sin u), longitude =
node + atan2(cos i sin u, cos u) - Earth rotation since the node. Times are float seconds since
1970-01-01 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np

OMEGA_EARTH_DEG_S = 360.0 / 86164.0905
KM_PER_DEG_LAT = 110.57
KM_PER_DEG_LON_EQ = 111.32

Box = tuple[float, float, float, float]  # west, south, east, north (degrees)


def epoch_seconds(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Orbit:
    inclination_deg: float
    period_s: float
    epoch_s: float  # an ascending-node time
    node_local_hour: float | None = None  # sun-synchronous: fixed local time at the node
    node_lon_at_epoch: float = 0.0  # precessing orbits
    precession_deg_day: float = 0.0

    def node_time(self, n: int) -> float:
        """The time of ascending node `n` (counted from the epoch's)."""
        return float(np.round(self.epoch_s + np.asarray(n) * self.period_s))

    def node_lon(self, t_node: float) -> float:
        if self.node_local_hour is not None:
            utc_hours = (np.asarray(t_node) % 86400.0) / 3600.0
            return float(wrap_lon(15.0 * (self.node_local_hour - utc_hours)))
        drift = self.precession_deg_day / 86400.0 - OMEGA_EARTH_DEG_S
        return float(wrap_lon(self.node_lon_at_epoch + drift * (np.asarray(t_node) - self.epoch_s)))


OCO2 = Orbit(98.2, 16 * 86400.0 / 233, epoch_seconds(date(2014, 9, 6)) + 1234.0,
             node_local_hour=13.6)
GOSAT = Orbit(98.06, 3 * 86400.0 / 44, epoch_seconds(date(2009, 4, 1)) + 777.0,
              node_local_hour=13.0)
ISS = Orbit(51.64, 5560.0, epoch_seconds(date(2019, 8, 1)) + 321.0, node_lon_at_epoch=40.0,
            precession_deg_day=-5.0)


def wrap_lon(lon: np.ndarray | float) -> np.ndarray:
    return (np.asarray(lon) + 180.0) % 360.0 - 180.0


def ground_track(orbit: Orbit, node_lon: float, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) at `dt` seconds after an ascending node at longitude `node_lon`."""
    i = np.radians(orbit.inclination_deg)
    u = 2 * np.pi * np.asarray(dt, np.float64) / orbit.period_s
    lat = np.degrees(np.arcsin(np.sin(i) * np.sin(u)))
    dlon = np.degrees(np.arctan2(np.cos(i) * np.sin(u), np.cos(u))) - OMEGA_EARTH_DEG_S * dt
    return lat, wrap_lon(node_lon + dlon)


def inside(lat: np.ndarray, lon: np.ndarray, box: Box) -> np.ndarray:
    west, south, east, north = box
    return (lat >= south) & (lat <= north) & (lon >= west) & (lon <= east)


@dataclass
class Pass:
    node_time: float
    node_lon: float
    dt: np.ndarray  # seconds after the node of each frame inside the box
    orbit_number: int


def passes_over(orbit: Orbit, day: date, box: Box, dayside_only: bool, frame_s: float,
                coarse_s: float = 5.0) -> list[Pass]:
    """Passes whose frames (every `frame_s` seconds) fall in `box` during the UTC `day`."""
    t0 = epoch_seconds(day)
    first = int(np.floor((t0 - orbit.period_s - orbit.epoch_s) / orbit.period_s))
    last = int(np.ceil((t0 + 86400.0 - orbit.epoch_s) / orbit.period_s))
    span = orbit.period_s / 4 if dayside_only else orbit.period_s
    start = -span if dayside_only else 0.0
    coarse = np.arange(start, span, coarse_s)
    found = []
    for n in range(first, last + 1):
        t_node = orbit.node_time(n)
        lon_node = orbit.node_lon(t_node)
        lat, lon = ground_track(orbit, lon_node, coarse)
        hit = inside(lat, lon, box) & (t_node + coarse >= t0) & (t_node + coarse < t0 + 86400)
        if not hit.any():
            continue
        lo, hi = coarse[hit].min() - coarse_s, coarse[hit].max() + coarse_s
        # Frame times on a fixed 1/frame_s lattice from the node keep sounding ids unique.
        dt = np.arange(np.ceil(lo / frame_s), np.floor(hi / frame_s) + 1) * frame_s
        flat, flon = ground_track(orbit, lon_node, dt)
        keep = inside(flat, flon, box) & (t_node + dt >= t0) & (t_node + dt < t0 + 86400)
        if keep.any():
            found.append(Pass(t_node, lon_node, dt[keep], n))
    return found


def pass_through(orbit: Orbit, day: date, lat_c: float, lon_c: float, local_hour: float
                 ) -> tuple[float, float, float]:
    """(node time, node longitude, seconds from node to crossing) of an ascending pass over
    (lat_c, lon_c) at about `local_hour` local solar time on `day`: dense test worlds place one
    over their box. Latitudes beyond the inclination's reach are clamped to it."""
    i = np.radians(orbit.inclination_deg)
    u = np.arcsin(np.clip(np.sin(np.radians(lat_c)) / np.sin(i), -1.0, 1.0))
    dt = float(u / (2 * np.pi) * orbit.period_s)
    utc_hour = (local_hour - lon_c / 15.0) % 24.0
    t_cross = epoch_seconds(day) + round(utc_hour * 3600.0)
    dlon = np.degrees(np.arctan2(np.cos(i) * np.sin(u), np.cos(u))) - OMEGA_EARTH_DEG_S * dt
    return t_cross - dt, float(wrap_lon(lon_c - dlon)), dt


def local_axes(orbit: Orbit, node_lon: float, dt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frame centres and the along-track unit vector as (north, east) components."""
    lat, lon = ground_track(orbit, node_lon, dt)
    lat2, lon2 = ground_track(orbit, node_lon, dt + 0.5)
    north = (lat2 - lat) * KM_PER_DEG_LAT
    east = wrap_lon(lon2 - lon) * KM_PER_DEG_LON_EQ * np.cos(np.radians(lat))
    norm = np.hypot(north, east)
    return lat, lon, north / norm, east / norm


def offset(lat: np.ndarray, lon: np.ndarray, north_km: np.ndarray, east_km: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    coslat = np.maximum(np.cos(np.radians(lat)), 0.05)
    return lat + north_km / KM_PER_DEG_LAT, wrap_lon(lon + east_km / (KM_PER_DEG_LON_EQ * coslat))


@dataclass
class Footprints:
    """Centres, corners and frame indices of an instrument's footprints."""

    lat: np.ndarray
    lon: np.ndarray
    vertex_lat: np.ndarray  # (n, 4)
    vertex_lon: np.ndarray
    footprint: np.ndarray  # 1..8
    frame: np.ndarray  # index of the frame each footprint belongs to


def swath(lat: np.ndarray, lon: np.ndarray, along_n: np.ndarray, along_e: np.ndarray,
          n_footprints: int, width_km: float, length_km: float) -> Footprints:
    """`n_footprints` rectangles side by side across each frame (centre lat/lon, along-track
    unit vector), each `width_km` across and `length_km` along."""
    n_frames = len(lat)
    k = np.arange(n_footprints) - (n_footprints - 1) / 2.0
    cross_n, cross_e = -along_e, along_n  # 90 degrees to the left of the track
    off = k[None, :] * width_km
    c_lat, c_lon = offset(lat[:, None], lon[:, None], off * cross_n[:, None],
                          off * cross_e[:, None])
    corners = ((-0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (0.5, -0.5))  # (across, along)
    vlat, vlon = [], []
    for a, b in corners:
        dn = a * width_km * cross_n[:, None] + b * length_km * along_n[:, None]
        de = a * width_km * cross_e[:, None] + b * length_km * along_e[:, None]
        la, lo = offset(c_lat, c_lon, dn, de)
        vlat.append(la)
        vlon.append(lo)
    return Footprints(
        lat=c_lat.ravel(), lon=c_lon.ravel(),
        vertex_lat=np.stack(vlat, axis=-1).reshape(-1, 4),
        vertex_lon=np.stack(vlon, axis=-1).reshape(-1, 4),
        footprint=np.tile(np.arange(1, n_footprints + 1), n_frames),
        frame=np.repeat(np.arange(n_frames), n_footprints))
