"""ESA CCI / C3S land cover (LCCS legend) codes mapped to the pipeline's 7 classes.

Our classes (`tasks.gridding.plausibility.LANDCOVER_CLASSES`, stored as uint8 1..7, 0 = no data):
1 cropland, 2 forest, 3 grassland, 4 shrubland, 5 urban, 6 water, 7 bare.

The LCCS legend is the one of the ESA CCI Land Cover / C3S `satellite-land-cover` maps (22 level-1
classes plus regional level-2 subclasses). The grouping follows the CCI-LC Product User Guide's
conversion to IPCC land categories (agriculture 10-40, forest 50-100 and 160-170, grassland 110
and 130, wetland 180, settlement 190, other: shrubland 120-122, sparse vegetation 140-153, bare
200-202, water 210, snow and ice 220), folded into 7 classes:

- wetland (180, shrub or herbaceous cover, flooded) -> grassland: it is vegetated, mostly
  herbaceous land, and our classes have no wetland;
- lichens and mosses (140) -> grassland (tundra-like herbaceous cover);
- sparse vegetation (150-153, under 15 % cover) and permanent snow and ice (220) -> bare.
"""

from __future__ import annotations

import numpy as np

CROPLAND, FOREST, GRASSLAND, SHRUBLAND, URBAN, WATER, BARE = 1, 2, 3, 4, 5, 6, 7
OUR_CLASSES = (CROPLAND, FOREST, GRASSLAND, SHRUBLAND, URBAN, WATER, BARE)
NODATA = 0

# code: (LCCS label, our class)
LCCS_LEGEND: dict[int, tuple[str, int]] = {
    10: ("Cropland, rainfed", CROPLAND),
    11: ("Cropland, rainfed, herbaceous cover", CROPLAND),
    12: ("Cropland, rainfed, tree or shrub cover", CROPLAND),
    20: ("Cropland, irrigated or post-flooding", CROPLAND),
    30: ("Mosaic cropland (>50%) / natural vegetation (<50%)", CROPLAND),
    40: ("Mosaic natural vegetation (>50%) / cropland (<50%)", CROPLAND),
    50: ("Tree cover, broadleaved, evergreen, closed to open (>15%)", FOREST),
    60: ("Tree cover, broadleaved, deciduous, closed to open (>15%)", FOREST),
    61: ("Tree cover, broadleaved, deciduous, closed (>40%)", FOREST),
    62: ("Tree cover, broadleaved, deciduous, open (15-40%)", FOREST),
    70: ("Tree cover, needleleaved, evergreen, closed to open (>15%)", FOREST),
    71: ("Tree cover, needleleaved, evergreen, closed (>40%)", FOREST),
    72: ("Tree cover, needleleaved, evergreen, open (15-40%)", FOREST),
    80: ("Tree cover, needleleaved, deciduous, closed to open (>15%)", FOREST),
    81: ("Tree cover, needleleaved, deciduous, closed (>40%)", FOREST),
    82: ("Tree cover, needleleaved, deciduous, open (15-40%)", FOREST),
    90: ("Tree cover, mixed leaf type (broadleaved and needleleaved)", FOREST),
    100: ("Mosaic tree and shrub (>50%) / herbaceous cover (<50%)", FOREST),
    110: ("Mosaic herbaceous cover (>50%) / tree and shrub (<50%)", GRASSLAND),
    120: ("Shrubland", SHRUBLAND),
    121: ("Shrubland, evergreen", SHRUBLAND),
    122: ("Shrubland, deciduous", SHRUBLAND),
    130: ("Grassland", GRASSLAND),
    140: ("Lichens and mosses", GRASSLAND),
    150: ("Sparse vegetation (tree, shrub, herbaceous cover) (<15%)", BARE),
    151: ("Sparse tree (<15%)", BARE),
    152: ("Sparse shrub (<15%)", BARE),
    153: ("Sparse herbaceous cover (<15%)", BARE),
    160: ("Tree cover, flooded, fresh or brackish water", FOREST),
    170: ("Tree cover, flooded, saline water", FOREST),
    180: ("Shrub or herbaceous cover, flooded, fresh/saline/brackish water", GRASSLAND),
    190: ("Urban areas", URBAN),
    200: ("Bare areas", BARE),
    201: ("Consolidated bare areas", BARE),
    202: ("Unconsolidated bare areas", BARE),
    210: ("Water bodies", WATER),
    220: ("Permanent snow and ice", BARE),
}
LCCS_NODATA = 0  # "No data" in the LCCS legend (also the NetCDF _FillValue)

LCCS_TO_CLASS: dict[int, int] = {code: cls for code, (_, cls) in LCCS_LEGEND.items()}

# uint8 lookup table: LUT[code] = our class (0 for no data and for anything not in the legend).
LCCS_LUT = np.zeros(256, dtype=np.uint8)
for _code, _cls in LCCS_TO_CLASS.items():
    LCCS_LUT[_code] = _cls


def map_lccs(codes: np.ndarray) -> np.ndarray:
    """LCCS codes (any integer dtype, values 0..255) -> our uint8 classes (0 = no data)."""
    return LCCS_LUT[np.asarray(codes).astype(np.uint8)]
