"""Daily latent weather of a demo world, the hourly ERA5 fields it implies, and clouds.

A few AR(1)-in-days Gaussian fields on a 0.25 degree lattice drive everything:
- `met` (~200 km): high values mean a stagnant high (higher surface pressure, warmer, weaker
  wind) and part of the truth's daily XCO2 anomaly, so ERA5 carries real information;
- `hidden` (~250 km): the part of the daily anomaly no covariate explains;
- `cloud` (~90 km) plus a fine daily field (~12 km) at sounding points: cloud cover, more of it
  over the basin; it also sets ERA5 sunshine, precipitation and evaporation;
- `wind_u`, `wind_v`, `temperature`: weather noise of their own.
Between daily anchors (valid at 12 UTC) fields vary linearly in time.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr

from demo_world.interpolate import to_grid, to_points
from demo_world.layout import RasterGrid, WorldLayout
from demo_world.noise import DailyField, Sampler, SphereField, stream_key, unit_vectors
from demo_world.sun import local_solar_hour, solar_elevation_deg
from demo_world.terrain import basin_weight, elevation_m, plateau_weight
from tasks.readers.era5_layout import EXPVER_FINAL, EXPVER_PRELIMINARY

# (correlation length km, lag-1 day correlation)
LATENTS = {"met": (200.0, 0.7), "hidden": (250.0, 0.7), "cloud": (90.0, 0.5),
           "wind_u": (350.0, 0.6), "wind_v": (350.0, 0.6), "temperature": (500.0, 0.8)}
CLOUD_FINE_KM = 12.0
CLOUD_FINE_WEIGHT = 0.45
# Cloudy where cloud + bias + fine > threshold: ~45% clear in general, ~15% over the basin.
CLEAR_SKY_THRESHOLD = -0.14
DENSE_THRESHOLD_SHIFT = 1.0  # dense test worlds: mostly clear, so every day has soundings
ERA5T_DAYS = 5  # ERA5T lags real time by ~5 days: the last files of a window are preliminary


class Weather:
    def __init__(self, layout: WorldLayout, seed: int, dense: bool = False) -> None:
        self.seed = seed
        self.era5 = layout.era5_raster
        e = self.era5
        # One extra lattice cell each side so points at the raster edge interpolate inside.
        self.lattice = RasterGrid(e.west - e.res, e.north + e.res, e.res, e.width + 2,
                                  e.height + 2)
        self.first_day = layout.start - timedelta(days=1)
        last_day = layout.end + timedelta(days=2)
        self.n_days = (last_day - self.first_day).days + 1
        la, lo = np.meshgrid(self.lattice.lats, self.lattice.lons, indexing="ij")
        xyz = unit_vectors(la, lo)
        self.fields = {
            name: DailyField(seed, f"weather.{name}", length, phi)
            .on_days(self.first_day.toordinal(), self.n_days, xyz).astype(np.float32)
            for name, (length, phi) in LATENTS.items()
        }
        s = Sampler.on_grid(self.lattice.lats, self.lattice.lons)
        self.orography = elevation_m(s, seed)
        self.basin = basin_weight(s)
        self.plateau = plateau_weight(s, seed)
        self.cloud_bias = (0.95 * self.basin - 0.3 * self.plateau).astype(np.float32)
        self.threshold = CLEAR_SKY_THRESHOLD + (DENSE_THRESHOLD_SHIFT if dense else 0.0)
        self.preliminary_from = layout.end + timedelta(days=2 - ERA5T_DAYS)

    # ---- latent fields --------------------------------------------------------------------
    def _index(self, times: pd.DatetimeIndex) -> np.ndarray:
        anchor = pd.Timestamp(self.first_day) + pd.Timedelta(hours=12)
        if times.tz is not None:
            times = times.tz_convert("UTC").tz_localize(None)
        idx = (times - anchor) / pd.Timedelta(days=1)
        return np.clip(np.asarray(idx, np.float64), 0.0, self.n_days - 1.0)

    def at_times(self, name: str, times: pd.DatetimeIndex) -> np.ndarray:
        """(len(times), lattice) field values, linear in time between daily anchors."""
        idx = self._index(times)
        i0 = np.minimum(np.floor(idx).astype(int), self.n_days - 2)
        w = (idx - i0).astype(np.float32)[:, None, None]
        f = self.fields[name]
        return f[i0] * (1 - w) + f[i0 + 1] * w

    def daily(self, name: str, day: date) -> np.ndarray:
        """The field's daily anchor (valid 12 UTC of `day`) on the lattice."""
        return self.fields[name][(day - self.first_day).days]

    def to_cells(self, lattice_values: np.ndarray, cells: RasterGrid) -> np.ndarray:
        return to_grid(lattice_values, self.lattice, cells.lats, cells.lons)

    # ---- clouds ---------------------------------------------------------------------------
    def cloudy(self, day: date, times: pd.DatetimeIndex, lat: np.ndarray, lon: np.ndarray
               ) -> np.ndarray:
        """Whether each sounding (time, lat, lon) of `day` looks at a cloud."""
        if len(lat) == 0:
            return np.zeros(0, bool)
        idx = self._index(times)
        i0 = np.minimum(np.floor(idx).astype(int), self.n_days - 2)
        w = idx - i0
        f = self.fields["cloud"]
        coarse = np.empty(len(lat), np.float64)
        for i in np.unique(i0):
            m = i0 == i
            a = to_points(f[i], self.lattice, lat[m], lon[m])
            b = to_points(f[i + 1], self.lattice, lat[m], lon[m])
            coarse[m] = a * (1 - w[m]) + b * w[m]
        bias = to_points(self.cloud_bias, self.lattice, lat, lon)
        fine = SphereField(stream_key(self.seed, "weather.cloud.fine", day.toordinal()),
                           CLOUD_FINE_KM, 64).at(unit_vectors(lat, lon))
        return coarse + bias + CLOUD_FINE_WEIGHT * fine > self.threshold

    def _cloud_fraction(self, cloud: np.ndarray) -> np.ndarray:
        return ndtr((cloud + self.cloud_bias - self.threshold) / CLOUD_FINE_WEIGHT)

    # ---- ERA5 -----------------------------------------------------------------------------
    def expver(self, day: date) -> str:
        return EXPVER_PRELIMINARY if day >= self.preliminary_from else EXPVER_FINAL

    def hourly_era5(self, day: date) -> xr.Dataset:
        """Steps 00..23 UTC of `day` on the ERA5 raster, ERA5 names and units."""
        times = pd.date_range(pd.Timestamp(day), periods=24, freq="h")
        mid = times - pd.Timedelta(minutes=30)  # accumulations cover the hour ending at t
        lat = self.lattice.lats[:, None]
        lon = self.lattice.lons[None, :]
        hours = np.arange(24, dtype=np.float64)[:, None, None]
        doy = day.timetuple().tm_yday
        z = self.orography

        met = self.at_times("met", times)
        temp = self.at_times("temperature", times)
        cloud_now = self._cloud_fraction(self.at_times("cloud", times))
        cloud_mid = self._cloud_fraction(self.at_times("cloud", mid))
        lsh = local_solar_hour(hours, lon)
        lsh_mid = local_solar_hour(hours - 0.5, lon)
        sin_sun_mid = np.sin(np.radians(solar_elevation_deg(doy, hours - 0.5, lat, lon)))

        north = 1.0 / (1.0 + np.exp(-np.clip(lat / 4.0, -40, 40)))
        season = np.cos(2 * np.pi * (doy - 200.0) / 365.25) * (2 * north - 1)
        sea_level_k = 273.15 + 24.0 - 0.45 * np.maximum(np.abs(lat) - 15.0, 0.0) + (
            3.0 + 0.22 * np.abs(lat)) * season
        diurnal = np.cos(2 * np.pi * (lsh - 14.5) / 24.0)
        t2m = (sea_level_k - 0.0055 * z
               + (3.5 + 3.0 * self.plateau) * (1 - 0.5 * cloud_now) * diurnal
               + 1.5 * met + 1.5 * temp)
        depression = (2.0 + 5.0 * np.clip(z / 4000.0, 0.0, 1.2)
                      + 3.0 * np.maximum(diurnal, 0.0) * (1 - cloud_now) - 1.5 * cloud_now
                      + 0.8 * temp) * (1 - 0.35 * self.basin)
        d2m = t2m - np.maximum(depression, 0.2)
        sp = (101325.0 * np.exp(-z / 8434.0) * (1.0 + 0.006 * met)
              + 80.0 * np.cos(4 * np.pi * (lsh - 10.0) / 24.0))
        exposure = (0.55 + 0.8 * self.plateau + 0.35 * (1 - self.basin)) * (1 - 0.18 * np.clip(
            met, -2.5, 2.5)) * (0.8 + 0.35 * np.maximum(np.sin(np.pi * (lsh - 8.0) / 12.0), 0))
        u10 = (0.8 + 2.2 * self.at_times("wind_u", times)) * exposure
        v10 = (0.3 + 2.2 * self.at_times("wind_v", times)) * exposure
        # Rain from the cloudiest places; the basin rains at night (the "Bashan night rain").
        cloud_mid_latent = self.at_times("cloud", mid) + self.cloud_bias - self.threshold
        intensity = np.maximum(cloud_mid_latent - 0.9, 0.0)
        night = 1 + 0.6 * np.cos(2 * np.pi * (lsh_mid - 2.0) / 24.0)
        afternoon = 1 + 0.6 * np.cos(2 * np.pi * (lsh_mid - 17.0) / 24.0)
        rate_mm = 1.2 * intensity ** 1.5 * (self.basin * night + (1 - self.basin) * afternoon)
        sund = 3600.0 * np.clip(sin_sun_mid / 0.12, 0.0, 1.0) * (1 - cloud_mid) ** 1.2
        evaporation_mm = (0.55 * np.clip(sin_sun_mid, 0.0, 1.0) * (1 - 0.6 * cloud_mid)
                          * (1 - 0.4 * self.plateau) - 0.004 * (sin_sun_mid <= 0))
        fields = {"e": -evaporation_mm / 1000.0, "tp": rate_mm / 1000.0, "sp": sp, "t2m": t2m,
                  "d2m": d2m, "u10": u10, "v10": v10, "sund": sund}
        inner = (slice(None), slice(1, -1), slice(1, -1))
        e = self.era5
        return xr.Dataset(
            {k: (("time", "latitude", "longitude"),
                 np.broadcast_to(v, (24,) + self.lattice.shape)[inner].astype(np.float32))
             for k, v in fields.items()},
            coords={"time": times.values, "latitude": e.lats, "longitude": e.lons,
                    "expver": ("time", [self.expver(day)] * 24)},
        )
