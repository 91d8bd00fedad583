"""Writing north-up EPSG:4326 GeoTIFFs (DEFLATE, tiled) through a sibling temporary file.

Used by the static layers (`xco2 covariates build/import`) and by the demo world; the file is read
back whole and compared before it is renamed, so a full disk never leaves a layer cut short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from tasks.io.atomic import atomic_path


def write_geotiff(path: Path | str, data: np.ndarray, transform: Affine, *, nodata: float | None = None,
                  scale: float | None = None, units: str | None = None,
                  tags: dict | None = None) -> Path:
    """Single-band GeoTIFF of `data` (its dtype is kept)."""
    path = Path(path)
    height, width = data.shape
    floating = np.issubdtype(data.dtype, np.floating)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": data.dtype,
        "crs": "EPSG:4326", "transform": transform, "compress": "DEFLATE",
        # Floating-point prediction roughly halves the size of smooth float fields.
        "predictor": 3 if floating else 2, "zlevel": 6, "num_threads": "ALL_CPUS",
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if nodata is not None:
        profile["nodata"] = nodata
    def reads_back_as_written(temp: Path) -> None:
        with rasterio.open(temp) as src:
            back = src.read(1)
        same = (back == data) | (np.isnan(back) & np.isnan(data)) if floating else back == data
        if back.shape != data.shape or not bool(np.all(same)):
            raise ValueError("the band read back differs from what was written")

    with atomic_path(path, verify=reads_back_as_written) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data, 1)
            if scale is not None:
                dst.scales = (scale,)
                dst.offsets = (0.0,)
            if units:
                dst.units = (units,)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return path
