"""The real archives behind `XCO2_SOURCE=earthdata`: OCO-2/OCO-3 via earthaccess, GOSAT and ERA5 via cdsapi."""

from __future__ import annotations

from tasks.settings import Settings
from tasks.sources.remote import Remote, SourceError


def real_remote(settings: Settings, product: str) -> Remote:
    if product in ("oco2", "oco3"):
        from tasks.sources.earthdata import earthdata_remote

        return earthdata_remote(settings, product)
    if product in ("gosat", "era5"):
        from tasks.sources.cds import cds_remote

        return cds_remote(settings, product)
    raise SourceError(f"{product} is not pulled from the real archives daily; "
                      "static layers come from `xco2 covariates build` or `xco2 covariates import`")
