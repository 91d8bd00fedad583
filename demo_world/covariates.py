"""Static covariate GeoTIFFs of a demo world, and their values on the world's cells.

Rasters cover the region plus a 0.5 degree margin at the resolutions of the real products
relative to the grid: elevation and NDVI finer (grid/2), land cover finer still (grid/4),
population coarser (2.5'). Truth terms use exactly what the pipeline will see after area-
weighted averaging where that is cheap to reproduce (elevation, NDVI: 2x2 block means) and the
underlying smooth field for population (the pipeline sees it blocky, as with real GPW).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from demo_world.landcover import NODATA, landcover_classes
from demo_world.layout import WorldLayout
from demo_world.noise import Sampler
from demo_world.population import City, population_density, settlements, urban_density
from demo_world.terrain import elevation_m
from demo_world.vegetation import (
    NDVI_NODATA,
    NDVI_SCALE,
    composites_covering,
    ndvi_composite,
    ndvi_peak,
    to_mod13q1,
    water_mask,
)
from tasks.io.geotiff import write_geotiff

Progress = Callable[[str, int, int], None]
LANDCOVER_STRIP_ROWS = 512  # bounds memory on the 25-million-pixel class raster


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float64
                                                                    ).astype(np.float32)


@dataclass(frozen=True)
class StaticPaths:
    """The static GeoTIFFs written (one NDVI composite per 16-day period)."""

    elevation: Path
    population: Path
    landcover: Path
    ndvi: list[Path]


@dataclass
class StaticCovariates:
    """Static fields on the world's cells (region + margin at the grid step)."""

    elevation_m: np.ndarray
    population_per_km2: np.ndarray
    ndvi: dict[tuple[int, int], np.ndarray]
    cities: list[City]
    paths: StaticPaths


def write_static_covariates(layout: WorldLayout, seed: int,
                            progress: Progress | None = None) -> StaticCovariates:
    report = progress or (lambda *_: None)
    static = layout.static_dir
    composites = composites_covering(layout.start, layout.end)
    total = 3 + len(composites)
    cities = settlements(seed, *layout.margin_box)

    # Elevation first: everything else depends on it.
    er = layout.elevation_raster
    elevation = elevation_m(Sampler.on_grid(er.lats, er.lons), seed)
    elevation_path = write_geotiff(static / "elevation.tif", elevation, er.transform,
                                   nodata=-9999.0, units="m",
                                   tags={"description": "synthetic SRTM-like elevation"})
    report("static covariates", 1, total)

    pr = layout.population_raster
    population = population_density(pr.lats, pr.lons, seed, cities)
    population_path = write_geotiff(
        static / "population.tif", population, pr.transform, nodata=-1.0, units="people/km2",
        tags={"description": "synthetic GPW-like population density"})
    report("static covariates", 2, total)

    landcover_path = _write_landcover(layout, seed, elevation, cities, static / "landcover.tif")
    report("static covariates", 3, total)

    nr = layout.ndvi_raster
    s = Sampler.on_grid(nr.lats, nr.lons)
    ndvi_elevation = elevation if nr == er else elevation_m(s, seed)
    urban = urban_density(nr.lats, nr.lons, cities)
    water = water_mask(s, seed, ndvi_elevation)
    peak = ndvi_peak(s, seed, ndvi_elevation, urban)
    del urban
    ndvi_cells: dict[tuple[int, int], np.ndarray] = {}
    ndvi_paths: list[Path] = []
    for i, (year, doy) in enumerate(composites):
        raw = to_mod13q1(ndvi_composite(s, seed, ndvi_elevation, peak, water, year, doy))
        ndvi_paths.append(write_geotiff(
            layout.ndvi_path(year, doy), raw, nr.transform, nodata=NDVI_NODATA,
            scale=NDVI_SCALE, tags={"description": "synthetic MOD13Q1-like 16-day NDVI",
                                    "scale_factor": NDVI_SCALE, "composite_start":
                                    f"{year}-{doy:03d}"}))
        ndvi_cells[(year, doy)] = block_mean(raw.astype(np.float32) * NDVI_SCALE, 2)
        report("static covariates", 4 + i, total)

    cells = layout.cells
    return StaticCovariates(
        elevation_m=block_mean(elevation, 2),
        population_per_km2=population_density(cells.lats, cells.lons, seed, cities),
        ndvi=ndvi_cells, cities=cities,
        paths=StaticPaths(elevation_path, population_path, landcover_path, ndvi_paths))


def _write_landcover(layout: WorldLayout, seed: int, elevation: np.ndarray, cities: list[City],
                     path: Path) -> Path:
    lr = layout.landcover_raster
    factor = int(round(layout.elevation_raster.res / lr.res))
    classes = np.full(lr.shape, NODATA, np.uint8)
    lats, lons = lr.lats, lr.lons
    step = LANDCOVER_STRIP_ROWS - LANDCOVER_STRIP_ROWS % factor
    for r0 in range(0, lr.height, step):
        r1 = min(r0 + step, lr.height)
        s = Sampler(lats[r0:r1], lons, True, lr.res)
        z = np.repeat(np.repeat(elevation[r0 // factor: (r1 + factor - 1) // factor], factor,
                                axis=0), factor, axis=1)[: r1 - r0, : lr.width]
        urban = urban_density(lats[r0:r1], lons, cities)
        water = water_mask(s, seed, z)
        classes[r0:r1] = landcover_classes(s, seed, z, urban, water)
    return write_geotiff(path, classes, lr.transform, nodata=NODATA,
                         tags={"description": "synthetic ESA-CCI-like land cover",
                               "classes": "1 cropland, 2 forest, 3 grassland, 4 shrubland, "
                                          "5 urban, 6 water, 7 bare"})
