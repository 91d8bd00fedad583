"""Where and when the satellites look (scenes), and what they report there (soundings).

- OCO-2: 8-footprint swaths (~10 km wide, 1.29 x 2.25 km footprints) along sun-synchronous
  16-day repeat tracks at ~13:36 local.
- OCO-3: ISS passes in nadir/glint at varying local times, and every few days a snapshot area
  map (operation_mode 4) of ~80 x 80 km over a city or a random target.
- GOSAT: 10.5 km circles in a 5-point cross-track pattern on a 3-day repeat at ~13:00.
Clouds remove most soundings (prescreening); a few cloudy ones stay with quality flag 1 and a low
bias, a share of clear ones is flagged too, and some flagged ones hold absurd values (0, 9999,
fill) that readers must drop. GOSAT = c0 + c1 * truth (+ noise): a linear bias against OCO.
With `dense`, every day gets a pass, a snapshot map and a GOSAT grid over the region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from demo_world.layout import RasterGrid
from demo_world.noise import hash_uniform, hash_uniform_scalar, stream_key
from demo_world.orbits import (
    GOSAT,
    ISS,
    OCO2,
    Box,
    Footprints,
    Orbit,
    ground_track,
    local_axes,
    offset,
    pass_through,
    passes_over,
    swath,
)
from demo_world.population import City
from demo_world.sun import solar_elevation_deg
from demo_world.truth import background_ppm
from demo_world.weather import Weather
from demo_world.writers.oco_lite import sounding_ids
from tasks.gridding.geometry import Grid
from tasks.gridding.soundings import VERTEX_LAT, VERTEX_LON

OCO_FRAME_S = 1.0 / 3.0
GOSAT_FOOTPRINT_DIAMETER_KM = 10.5
SAM_SIZE_KM = 80.0
SAM_STRIPS = 6
SAM_CHANCE_PER_DAY = 0.3
DENSE_GOSAT_POINTS_PER_SIDE = 6
MIN_SUN_ELEVATION_DEG = 10.0
ISS_INCLINATION_REACH_DEG = 51.6
ABSURD_VALUES = (0.0, 9999.0, np.nan)  # NaN is written as the file's fill value


@dataclass(frozen=True)
class Instrument:
    source: str
    footprint_km: tuple[float, float]  # across, along (OCO) or diameter (GOSAT)
    uncertainty_ppm: tuple[float, float]  # range of reported 1-sigma uncertainties
    flagged_clear_share: float  # clear soundings that still fail quality screening
    kept_cloudy_share: float  # cloudy soundings that survive prescreening, flagged


OCO2_INSTRUMENT = Instrument("oco2", (1.29, 2.25), (0.5, 1.2), 0.12, 0.06)
OCO3_INSTRUMENT = Instrument("oco3", (1.6, 2.2), (0.55, 1.2), 0.14, 0.06)
GOSAT_INSTRUMENT = Instrument("gosat", (GOSAT_FOOTPRINT_DIAMETER_KM,) * 2, (1.5, 2.5), 0.15, 0.1)


@dataclass
class Scene:
    """Footprints one instrument takes on one day, before clouds and values."""

    time_s: np.ndarray
    fp: Footprints
    operation_mode: np.ndarray
    orbit: np.ndarray
    sensor_zenith: np.ndarray
    target_id: np.ndarray | None = None
    target_name: np.ndarray | None = None

    @classmethod
    def empty(cls) -> "Scene":
        z = np.zeros(0)
        fp = Footprints(z, z, np.zeros((0, 4)), np.zeros((0, 4)), z.astype(int), z.astype(int))
        return cls(z, fp, z.astype(int), z.astype(int), z, np.zeros(0, object),
                   np.zeros(0, object))

    def __len__(self) -> int:
        return len(self.time_s)


def _concat(scenes: list[Scene]) -> Scene:
    scenes = [s for s in scenes if len(s)]
    if not scenes:
        return Scene.empty()

    def cat(getter: Callable[[Scene], np.ndarray]) -> np.ndarray:
        return np.concatenate([getter(s) for s in scenes])

    def names(s: Scene, attr: str) -> np.ndarray:
        v = getattr(s, attr)
        return v if v is not None else np.full(len(s), "none", object)

    fp = Footprints(cat(lambda s: s.fp.lat), cat(lambda s: s.fp.lon),
                    cat(lambda s: s.fp.vertex_lat), cat(lambda s: s.fp.vertex_lon),
                    cat(lambda s: s.fp.footprint), cat(lambda s: s.fp.frame))
    return Scene(cat(lambda s: s.time_s), fp, cat(lambda s: s.operation_mode),
                 cat(lambda s: s.orbit), cat(lambda s: s.sensor_zenith),
                 cat(lambda s: names(s, "target_id")), cat(lambda s: names(s, "target_name")))


def _swath_scene(orbit: Orbit, node_time: float, node_lon: float, dt: np.ndarray, orbit_number: int,
                 mode: int, instrument: Instrument) -> Scene:
    lat, lon, an, ae = local_axes(orbit, node_lon, dt)
    fp = swath(lat, lon, an, ae, 8, *instrument.footprint_km)
    n = len(fp.lat)
    t = (node_time + dt)[fp.frame]
    zenith = 0.5 if mode == 0 else 25.0
    return Scene(t, fp, np.full(n, mode), np.full(n, orbit_number), np.full(n, zenith))


def _box_filter(scene: Scene, box: Box) -> Scene:
    west, south, east, north = box
    keep = (scene.fp.lat >= south) & (scene.fp.lat <= north) & (scene.fp.lon >= west) & (
        scene.fp.lon <= east)
    return _subset(scene, keep)


def _subset(scene: Scene, keep: np.ndarray) -> Scene:
    fp = scene.fp
    return Scene(scene.time_s[keep],
                 Footprints(fp.lat[keep], fp.lon[keep], fp.vertex_lat[keep], fp.vertex_lon[keep],
                            fp.footprint[keep], fp.frame[keep]),
                 scene.operation_mode[keep], scene.orbit[keep], scene.sensor_zenith[keep],
                 None if scene.target_id is None else scene.target_id[keep],
                 None if scene.target_name is None else scene.target_name[keep])


def _daylight(scene: Scene, day: date, dense: bool) -> Scene:
    """These instruments measure reflected sunlight: nothing below ~10 degrees of sun (polar
    night included). Dense test worlds keep their guaranteed scenes whatever the sun does."""
    if dense or not len(scene):
        return scene
    sun = solar_elevation_deg(day.timetuple().tm_yday, (scene.time_s % 86400.0) / 3600.0,
                              scene.fp.lat, scene.fp.lon)
    return _subset(scene, sun >= MIN_SUN_ELEVATION_DEG)


def _region_point(seed: int, stream: str, day: date, grid: Grid, spread: float = 0.6
                  ) -> tuple[float, float]:
    key = stream_key(seed, stream)
    u = hash_uniform_scalar(key, day.toordinal(), 1)
    v = hash_uniform_scalar(key, day.toordinal(), 2)
    lat = (grid.south + grid.north) / 2 + (u - 0.5) * spread * (grid.north - grid.south)
    lon = (grid.west + grid.east) / 2 + (v - 0.5) * spread * (grid.east - grid.west)
    return float(lat), float(lon)


# ---- scenes ---------------------------------------------------------------------------------
def oco2_scene(day: date, box: Box, grid: Grid, seed: int, dense: bool) -> Scene:
    scenes = []
    for p in passes_over(OCO2, day, box, dayside_only=True, frame_s=OCO_FRAME_S):
        scenes.append(_swath_scene(OCO2, p.node_time, p.node_lon, p.dt, p.orbit_number,
                                   p.orbit_number % 2, OCO2_INSTRUMENT))
    over_region = any(grid.contains(s.fp.lat, s.fp.lon).any() for s in scenes)
    if dense and not over_region:
        lat_c, lon_c = _region_point(seed, "oco2.dense", day, grid)
        t_node, lon_node, dt_cross = pass_through(OCO2, day, lat_c, lon_c, 13.6)
        dt = dt_cross + np.arange(-2000, 2000) * OCO_FRAME_S  # +-11 minutes around it
        scenes.append(_swath_scene(OCO2, t_node, lon_node, dt, 90000 + day.toordinal() % 1000,
                                   0, OCO2_INSTRUMENT))
    return _daylight(_box_filter(_concat(scenes), box), day, dense)


def oco3_scene(day: date, box: Box, grid: Grid, seed: int, dense: bool, cities: list[City]
               ) -> Scene:
    scenes = []
    for p in passes_over(ISS, day, box, dayside_only=False, frame_s=OCO_FRAME_S):
        lat, lon = ground_track(ISS, p.node_lon, p.dt)
        sun = solar_elevation_deg(day.timetuple().tm_yday,
                                  ((p.node_time + p.dt) % 86400.0) / 3600.0, lat, lon)
        dt = p.dt[sun > 15.0]  # OCO-3 needs the sun well above the horizon
        if len(dt):
            scenes.append(_swath_scene(ISS, p.node_time, p.node_lon, dt, p.orbit_number,
                                       p.orbit_number % 2, OCO3_INSTRUMENT))
    key = stream_key(seed, "oco3.sam")
    reachable = min(abs(grid.south), abs(grid.north)) <= ISS_INCLINATION_REACH_DEG
    if dense or (reachable and hash_uniform_scalar(key, day.toordinal()) < SAM_CHANCE_PER_DAY):
        scenes.append(_snapshot_area_map(day, grid, seed, dense, cities))
    return _daylight(_box_filter(_concat(scenes), box), day, dense)


def _snapshot_area_map(day: date, grid: Grid, seed: int, dense: bool, cities: list[City]
                       ) -> Scene:
    key = stream_key(seed, "oco3.sam.site")
    o = day.toordinal()
    inside = [c for c in cities if grid.south <= c.lat <= grid.north
              and grid.west <= c.lon <= grid.east and not c.name.startswith("town_")]
    if dense or not inside or hash_uniform_scalar(key, o, 0) < 0.25:
        lat_c, lon_c = _region_point(seed, "oco3.sam.random", day, grid,
                                     spread=0.3 if dense else 0.9)
        target_id, target_name = f"sam{o % 10000:04d}", "none"
    else:
        idx = int(hash_uniform_scalar(key, o, 1) * len(inside))
        city = inside[idx]
        lat_c, lon_c = city.lat, city.lon
        target_id, target_name = f"fossil{idx + 1:04d}", city.name
    angle = np.radians(360.0 * hash_uniform_scalar(key, o, 2))
    local_hour = 9.0 + 7.0 * hash_uniform_scalar(key, o, 3)
    t0 = (pd.Timestamp(day).tz_localize("UTC").timestamp()
          + round(((local_hour - lon_c / 15.0) % 24.0) * 3600.0))
    along_n, along_e = np.cos(angle), np.sin(angle)
    width = 8 * OCO3_INSTRUMENT.footprint_km[0]
    frames_per_strip = int(SAM_SIZE_KM / OCO3_INSTRUMENT.footprint_km[1])
    strip = np.repeat(np.arange(SAM_STRIPS), frames_per_strip)
    step = np.tile(np.arange(frames_per_strip), SAM_STRIPS)
    across_km = (strip - (SAM_STRIPS - 1) / 2.0) * width
    along_km = (step - (frames_per_strip - 1) / 2.0) * OCO3_INSTRUMENT.footprint_km[1]
    lat, lon = offset(np.full(len(strip), lat_c), np.full(len(strip), lon_c),
                      along_km * along_n - across_km * along_e,
                      along_km * along_e + across_km * along_n)
    fp = swath(lat, lon, np.full(len(lat), along_n), np.full(len(lat), along_e), 8,
               *OCO3_INSTRUMENT.footprint_km)
    frame_time = t0 + (strip * (frames_per_strip + 6) + step) * OCO_FRAME_S
    n = len(fp.lat)
    return Scene(frame_time[fp.frame], fp, np.full(n, 4), np.full(n, 70000 + o % 10000),
                 np.full(n, 30.0), np.full(n, target_id, object), np.full(n, target_name, object))


def gosat_scene(day: date, box: Box, grid: Grid, seed: int, dense: bool) -> Scene:
    lats, lons, times = [], [], []
    spacing_km = 158.0
    for p in passes_over(GOSAT, day, box, dayside_only=True, frame_s=22.0, coarse_s=11.0):
        lat, lon, an, ae = local_axes(GOSAT, p.node_lon, p.dt)
        for k in range(-2, 3):
            la, lo = offset(lat, lon, -ae * k * spacing_km, an * k * spacing_km)
            lats.append(la)
            lons.append(lo)
            times.append(p.node_time + p.dt + (k + 2) * 4.0)
    if dense:
        key = stream_key(seed, "gosat.dense")
        o = day.toordinal()
        # A k x k lattice over the region plus one ring outside it (files hold both).
        k = DENSE_GOSAT_POINTS_PER_SIDE
        i, j = np.meshgrid(np.arange(-1, k + 1), np.arange(-1, k + 1), indexing="ij")
        jitter = hash_uniform(key, o, i, j, np.arange(2)[:, None, None]) - 0.5
        la = grid.south + (i + 0.5 + 0.4 * jitter[0]) * (grid.north - grid.south) / k
        lo = grid.west + (j + 0.5 + 0.4 * jitter[1]) * (grid.east - grid.west) / k
        lats.append(la.ravel())
        lons.append(lo.ravel())
        t = pd.Timestamp(day).tz_localize("UTC").timestamp() + round(
            ((13.0 - lo.mean() / 15.0) % 24.0) * 3600.0)
        times.append(t + 4.0 * np.arange(la.size))
    if not lats:
        return Scene.empty()
    lat, lon, t = np.concatenate(lats), np.concatenate(lons), np.concatenate(times)
    n = len(lat)
    nan4 = np.full((n, 4), np.nan)
    fp = Footprints(lat, lon, nan4, nan4, np.zeros(n, int), np.arange(n))
    scene = Scene(t, fp, np.zeros(n, int), np.zeros(n, int), np.full(n, 20.0))
    return _daylight(_box_filter(scene, box), day, dense)


def drop_duplicate_ids(df: pd.DataFrame) -> pd.DataFrame:
    """OCO sounding ids (tenth of a second + footprint) must be unique in a granule; two scenes
    of one day (a pass and a snapshot map) could rarely share a tenth of a second."""
    ids = sounding_ids(df["time"], df["footprint"].to_numpy())
    return df.loc[~pd.Series(ids).duplicated().to_numpy()].reset_index(drop=True)


# ---- values ---------------------------------------------------------------------------------
@dataclass
class Observer:
    """Turns a scene into soundings using the day's truth, clouds and instrument noise."""

    weather: Weather
    cells: RasterGrid
    grid: Grid
    elevation_cells: np.ndarray
    gosat_bias: tuple[float, float]
    dense: bool
    seed: int

    def soundings(self, scene: Scene, instrument: Instrument, day: date,
                  truth_cells: np.ndarray) -> pd.DataFrame:
        rng = np.random.default_rng(stream_key(self.seed, "observe", instrument.source,
                                               day.toordinal()))
        n = len(scene)
        lat, lon = scene.fp.lat, scene.fp.lon
        times = pd.DatetimeIndex(pd.to_datetime(np.round(scene.time_s * 1e3).astype(np.int64),
                                                unit="ms", utc=True))
        row = np.clip(((self.cells.north - lat) / self.cells.res).astype(int), 0,
                      self.cells.height - 1)
        col = np.clip(((lon - self.cells.west) / self.cells.res).astype(int), 0,
                      self.cells.width - 1)
        truth = truth_cells[row, col].astype(np.float64)
        cloudy = self.weather.cloudy(day, times, lat, lon)
        if self.dense:
            cloudy = self._guarantee_clear(cloudy, lat, lon)
        lo, hi = instrument.uncertainty_ppm
        uncertainty = rng.uniform(lo, hi, n)
        noise = uncertainty * rng.standard_normal(n)
        measured = truth + noise
        if instrument.source == "gosat":
            c0, c1 = self.gosat_bias
            measured = c0 + c1 * truth + noise
        kept_cloudy = cloudy & (rng.random(n) < instrument.kept_cloudy_share)
        flagged_clear = ~cloudy & (rng.random(n) < instrument.flagged_clear_share)
        keep = ~cloudy | kept_cloudy
        xco2 = measured.copy()
        xco2[flagged_clear] += rng.normal(1.5, 3.0, flagged_clear.sum())
        xco2[kept_cloudy] -= np.abs(rng.normal(3.0, 3.0, kept_cloudy.sum()))
        flag = (flagged_clear | kept_cloudy).astype(np.int8)
        absurd = (flag == 1) & (rng.random(n) < 0.05)
        picks = rng.integers(0, len(ABSURD_VALUES), n)
        xco2[absurd] = np.array(ABSURD_VALUES)[picks[absurd]]
        uncertainty[absurd & np.isnan(xco2)] = np.nan
        z = self.elevation_cells[row, col].astype(np.float64)
        sun = solar_elevation_deg(day.timetuple().tm_yday,
                                  (scene.time_s % 86400.0) / 3600.0, lat, lon)
        df = pd.DataFrame({
            "time": times, "latitude": lat, "longitude": lon, "xco2": xco2,
            "xco2_uncertainty": uncertainty, "quality_flag": flag,
            "footprint": scene.fp.footprint.astype(np.int16),
            "source": pd.Series([instrument.source] * n, dtype=object),
        })
        for i in range(4):
            df[VERTEX_LAT[i]] = scene.fp.vertex_lat[:, i]
            df[VERTEX_LON[i]] = scene.fp.vertex_lon[:, i]
        df["footprint_diameter_km"] = (GOSAT_FOOTPRINT_DIAMETER_KM
                                       if instrument.source == "gosat" else np.nan)
        df["operation_mode"] = scene.operation_mode
        df["orbit"] = scene.orbit
        df["solar_zenith_angle"] = 90.0 - sun
        df["sensor_zenith_angle"] = scene.sensor_zenith
        df["altitude"] = z
        df["psurf"] = 1013.25 * np.exp(-z / 8434.0)
        df["xco2_apriori"] = background_ppm(day, lat) - 0.8
        if scene.target_id is not None:
            df["target_id"] = scene.target_id
            df["target_name"] = scene.target_name
        return df.loc[keep].reset_index(drop=True)

    def _guarantee_clear(self, cloudy: np.ndarray, lat: np.ndarray, lon: np.ndarray
                         ) -> np.ndarray:
        """Dense worlds promise clear soundings in the region every day: clear the footprints
        nearest the region centre if clouds took them all."""
        in_region = self.grid.contains(lat, lon)
        if not in_region.any() or (in_region & ~cloudy).sum() >= 8:
            return cloudy
        lat_c = (self.grid.south + self.grid.north) / 2
        lon_c = (self.grid.west + self.grid.east) / 2
        distance = np.where(in_region, np.hypot(lat - lat_c, lon - lon_c), np.inf)
        nearest = np.argsort(distance)[:16]
        cloudy = cloudy.copy()
        cloudy[nearest[np.isfinite(distance[nearest])]] = False
        return cloudy
