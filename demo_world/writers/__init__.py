"""Small generators of files in the REAL formats (torchgeo style), for the demo world and tests."""

from demo_world.writers.era5 import write_era5_new_cds, write_era5_old_cds, write_era5_zip
from tasks.io.geotiff import write_geotiff
from demo_world.writers.gosat_c3s import write_gosat_c3s
from demo_world.writers.oco_lite import sounding_ids, write_oco_lite

__all__ = ["sounding_ids", "write_era5_new_cds", "write_era5_old_cds",
           "write_era5_zip", "write_geotiff", "write_gosat_c3s", "write_oco_lite"]
