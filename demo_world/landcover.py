"""Synthetic land cover classes consistent with the elevation, water and cities."""

from __future__ import annotations

import numpy as np

from demo_world.noise import Sampler, stream_key

CROPLAND, FOREST, GRASSLAND, SHRUBLAND, URBAN, WATER, BARE = 1, 2, 3, 4, 5, 6, 7
NODATA = 0
CLASS_NAMES = {CROPLAND: "cropland", FOREST: "forest", GRASSLAND: "grassland",
               SHRUBLAND: "shrubland", URBAN: "urban", WATER: "water", BARE: "bare"}
URBAN_DENSITY_PER_KM2 = 2200.0


def landcover_classes(s: Sampler, seed: int, elevation: np.ndarray, urban: np.ndarray,
                      water: np.ndarray) -> np.ndarray:
    """uint8 classes; the finest noise octave is at the class raster's own pixel size so field
    edges are ragged at that scale."""
    mix = s.fractal(0.3, s.resolution or 0.0025, 0.65, stream_key(seed, "landcover.mix"))
    jitter = s.fractal(0.5, 0.02, 0.6, stream_key(seed, "landcover.jitter"))
    z = elevation + 250.0 * jitter
    out = np.full(s.shape, CROPLAND, np.uint8)
    # Thresholds on `mix` (median ~0, quartiles ~+-0.16) set each belt's class shares.
    lowland = z < 800
    out[lowland & (mix > 0.08)] = FOREST
    hills = (z >= 800) & (z < 2800)
    out[hills] = np.where(mix[hills] > -0.2, FOREST,
                          np.where(z[hills] < 1500, CROPLAND, SHRUBLAND))
    subalpine = (z >= 2800) & (z < 3750)
    out[subalpine] = np.where(mix[subalpine] > -0.1, FOREST, SHRUBLAND)
    alpine = (z >= 3750) & (z < 4850)
    out[alpine] = np.where(mix[alpine] > 0.2, SHRUBLAND, GRASSLAND)
    out[z >= 4850] = BARE
    out[urban + 1500.0 * mix > URBAN_DENSITY_PER_KM2] = URBAN
    out[water] = WATER
    return out
