"""Synthetic demo world in the real input formats, with its truth (see world.py for the layout).

Public:
- write_demo_world(root, region, start, end, grid_step=0.01, seed=20200601, dense=False,
  progress=None) -> DemoWorld
- DemoWorld (manifest; DemoWorld.load(root)), truth_for_day(root, day) -> np.ndarray,
  truth_at_cells(root) -> truth(cells, days) for the model comparison
- writers of real formats for fixtures: write_oco_lite, write_gosat_c3s, write_era5_zip,
  write_era5_new_cds, write_era5_old_cds, write_geotiff
"""

from demo_world.world import (
    DemoWorld,
    gosat_bias_coefficients,
    truth_at_cells,
    truth_for_day,
    write_demo_world,
)
from demo_world.writers import (
    write_era5_new_cds,
    write_era5_old_cds,
    write_era5_zip,
    write_geotiff,
    write_gosat_c3s,
    write_oco_lite,
)

__all__ = [
    "DemoWorld", "gosat_bias_coefficients", "truth_at_cells", "truth_for_day", "write_demo_world",
    "write_era5_new_cds", "write_era5_old_cds", "write_era5_zip", "write_geotiff",
    "write_gosat_c3s", "write_oco_lite",
]
