"""`xco2 sources check`: for each real source, are credentials configured and is the archive reachable?

Reachability is an HTTPS request to the archive's host (any HTTP answer counts); credential
values are never printed, only where they were found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.settings import Settings
from tasks.sources.credentials import (
    DEFAULT_CDS_URL, EARTHDATA_HOST, MissingCredentials, apply_secret_blocks, cds_credentials, earthdata_login,
)

SOURCES = {
    "oco2": ("NASA Earthdata (earthaccess)", "earthdata"),
    "oco3": ("NASA Earthdata (earthaccess)", "earthdata"),
    "gosat": ("Copernicus CDS (cdsapi)", "cds"),
    "era5": ("Copernicus CDS (cdsapi)", "cds"),
}


@dataclass
class SourceStatus:
    source: str
    service: str
    configured: bool
    credentials_from: str | None
    reachable: bool | None
    problem: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def _reachable(url: str, timeout: float) -> tuple[bool, str | None]:
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
        return True, None
    except requests.RequestException as exc:
        return False, f"{url} not reachable ({type(exc).__name__})"


def check_sources(settings: Settings, probe: bool = True, timeout: float = 5.0) -> list[SourceStatus]:
    try:
        apply_secret_blocks(settings.earthdata_secret_block, settings.cds_secret_block)
    except Exception as exc:  # noqa: BLE001 - reported per source below
        block_problem: str | None = f"Prefect Secret block could not be loaded ({type(exc).__name__})"
    else:
        block_problem = None
    out = []
    for source, (service, kind) in SOURCES.items():
        try:
            if kind == "earthdata":
                origin, url = earthdata_login().origin, f"https://{EARTHDATA_HOST}"
            else:
                creds = cds_credentials()
                origin, url = creds.origin, creds.url or DEFAULT_CDS_URL
        except MissingCredentials as exc:
            out.append(SourceStatus(source, service, False, None, None, block_problem or str(exc)))
            continue
        reachable, problem = _reachable(url, timeout) if probe else (None, None)
        out.append(SourceStatus(source, service, True, origin, reachable, problem))
    return out
