"""Synthetic population density (people per km2): rural background plus cities and towns.

Named Sichuan/Chongqing cities sit at their real places; elsewhere (and between them) towns are
scattered on a global 0.5 degree lattice, more of them at low elevation, so any region gets an
urban pattern. City density falls off exponentially from the centre (Clark's urban model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo_world.noise import Sampler, hash_uniform, stream_key
from demo_world.terrain import macro_elevation_m

KM_PER_DEG = 111.2
TOWN_LATTICE_DEG = 0.5


@dataclass(frozen=True)
class City:
    name: str
    lon: float
    lat: float
    peak_per_km2: float
    radius_km: float  # e-folding distance of the density


CITIES = (
    City("Chengdu", 104.07, 30.67, 24000, 9.0),
    City("Chongqing", 106.55, 29.56, 21000, 8.0),
    City("Mianyang", 104.74, 31.47, 11000, 4.5),
    City("Deyang", 104.40, 31.13, 9000, 4.0),
    City("Leshan", 103.77, 29.55, 9000, 4.0),
    City("Nanchong", 106.08, 30.80, 10000, 4.5),
    City("Yibin", 104.64, 28.77, 9500, 4.0),
    City("Luzhou", 105.44, 28.87, 9500, 4.0),
    City("Zigong", 104.78, 29.34, 9500, 4.0),
    City("Neijiang", 105.06, 29.58, 8000, 3.5),
    City("Suining", 105.59, 30.53, 8000, 3.5),
    City("Dazhou", 107.47, 31.21, 9000, 3.5),
    City("Guangyuan", 105.84, 32.44, 6500, 3.0),
    City("Ya'an", 103.00, 29.98, 6000, 3.0),
    City("Panzhihua", 101.72, 26.58, 7000, 3.5),
    City("Xichang", 102.26, 27.89, 6000, 3.0),
    City("Meishan", 103.85, 30.08, 7000, 3.5),
    City("Guang'an", 106.63, 30.46, 6500, 3.0),
    City("Bazhong", 106.75, 31.87, 6500, 3.0),
    City("Ziyang", 104.63, 30.13, 6500, 3.0),
    City("Kangding", 101.96, 30.05, 2500, 1.5),
    City("Barkam", 102.22, 31.90, 1500, 1.2),
)


def towns(seed: int, west: float, south: float, east: float, north: float) -> list[City]:
    """Procedural towns whose lattice cell touches the box; elevation thins them out."""
    pad = 0.35  # beyond a town kernel's reach (8 x 3.5 km), so cells never miss a town
    ys = np.arange(np.floor((south - pad) / TOWN_LATTICE_DEG),
                   np.ceil((north + pad) / TOWN_LATTICE_DEG) + 1).astype(np.int64)
    xs = np.arange(np.floor((west - pad) / TOWN_LATTICE_DEG),
                   np.ceil((east + pad) / TOWN_LATTICE_DEG) + 1).astype(np.int64)
    lattice_y, lattice_x = np.meshgrid(ys, xs, indexing="ij")
    iy, ix = lattice_y.ravel(), lattice_x.ravel()
    key = stream_key(seed, "population.towns")
    lat = (iy + hash_uniform(key, iy, ix, 1)) * TOWN_LATTICE_DEG
    lon = (ix + hash_uniform(key, iy, ix, 2)) * TOWN_LATTICE_DEG
    keep = (np.abs(lat) < 70)
    z = macro_elevation_m(Sampler.at_points(lat, lon), seed)
    chance = 0.55 * np.exp(-np.maximum(z, 0) / 1300.0)
    keep &= hash_uniform(key, iy, ix, 3) < chance
    size = hash_uniform(key, iy, ix, 4)
    peak = 800.0 * np.exp(2.2 * size)  # ~800 to ~7200 people/km2
    radius = 1.0 + 2.5 * size
    return [City(f"town_{a}_{b}", float(lo), float(la), float(p), float(r))
            for a, b, lo, la, p, r, k in zip(iy, ix, lon, lat, peak, radius, keep) if k]


def settlements(seed: int, west: float, south: float, east: float, north: float) -> list[City]:
    """Cities and towns whose kernels can reach the box (so a cell's density does not depend
    on the box it was generated with)."""
    pad = 1.0
    named = [c for c in CITIES
             if west - pad <= c.lon <= east + pad and south - pad <= c.lat <= north + pad]
    return named + towns(seed, west, south, east, north)


def urban_density(lats: np.ndarray, lons: np.ndarray, cities: list[City]) -> np.ndarray:
    """Sum of city kernels on the grid lats (north to south) x lons, each computed only in the
    window where it matters (8 e-folding distances)."""
    out = np.zeros((len(lats), len(lons)), np.float32)
    lat_desc = lats[0] > lats[-1]
    for c in cities:
        reach_lat = 8 * c.radius_km / KM_PER_DEG
        reach_lon = reach_lat / max(np.cos(np.radians(c.lat)), 0.05)
        if lat_desc:
            r0 = np.searchsorted(-lats, -(c.lat + reach_lat))
            r1 = np.searchsorted(-lats, -(c.lat - reach_lat))
        else:
            r0 = np.searchsorted(lats, c.lat - reach_lat)
            r1 = np.searchsorted(lats, c.lat + reach_lat)
        c0 = np.searchsorted(lons, c.lon - reach_lon)
        c1 = np.searchsorted(lons, c.lon + reach_lon)
        if r1 <= r0 or c1 <= c0:
            continue
        dy = (lats[r0:r1] - c.lat) * KM_PER_DEG
        dx = (lons[c0:c1] - c.lon) * KM_PER_DEG * np.cos(np.radians(c.lat))
        r = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        out[r0:r1, c0:c1] += (c.peak_per_km2 * np.exp(-r / c.radius_km)).astype(np.float32)
    return out


def rural_density(s: Sampler, seed: int) -> np.ndarray:
    """Villages and farmland: dense in warm lowlands, sparse on the plateau."""
    z = macro_elevation_m(s, seed)
    patchy = 0.65 + 0.35 * s.fractal(0.8, 0.1, 0.6, stream_key(seed, "population.rural"))
    polar = np.clip(1.0 - (np.abs(s.lat) - 55.0) / 15.0, 0.0, 1.0)
    return (650.0 * np.exp(-z / 850.0) * patchy * polar + 0.5).astype(np.float32)


def population_density(lats: np.ndarray, lons: np.ndarray, seed: int,
                       cities: list[City]) -> np.ndarray:
    s = Sampler.on_grid(lats, lons)
    return rural_density(s, seed) + urban_density(lats, lons, cities)
