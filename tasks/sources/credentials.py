"""Where credentials come from, and checks that never reveal them.

NASA Earthdata: `EARTHDATA_TOKEN`, or `EARTHDATA_USERNAME` + `EARTHDATA_PASSWORD`, or a
`~/.netrc` entry for urs.earthdata.nasa.gov, or a Prefect Secret block named in settings.
Copernicus CDS: `CDSAPI_URL` + `CDSAPI_KEY`, or `~/.cdsapirc`, or a Prefect Secret block.
Only *where* a credential was found is ever reported, never its value.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

EARTHDATA_HOST = "urs.earthdata.nasa.gov"
DEFAULT_CDS_URL = "https://cds.climate.copernicus.eu/api"

EARTHDATA_HINT = ("set EARTHDATA_USERNAME and EARTHDATA_PASSWORD (or EARTHDATA_TOKEN), "
                  f"or add a 'machine {EARTHDATA_HOST}' entry to ~/.netrc")
CDS_HINT = "set CDSAPI_URL and CDSAPI_KEY, or write ~/.cdsapirc (url: ... / key: ...)"


class MissingCredentials(RuntimeError):
    """No usable credential; the message says exactly what to set (and contains no secret)."""


@dataclass(frozen=True)
class EarthdataLogin:
    strategy: str  # 'environment' or 'netrc' (earthaccess.login strategies)
    origin: str  # human-readable, secret-free


@dataclass(frozen=True)
class CdsCredentials:
    url: str
    key: str
    origin: str

    def __repr__(self) -> str:  # a stray log line must not carry the key
        return f"CdsCredentials(url={self.url!r}, key=***, origin={self.origin!r})"


def _home() -> Path:
    return Path(os.environ.get("HOME", str(Path.home())))


def earthdata_login() -> EarthdataLogin:
    if os.environ.get("EARTHDATA_TOKEN"):
        return EarthdataLogin("environment", "EARTHDATA_TOKEN")
    if os.environ.get("EARTHDATA_USERNAME") and os.environ.get("EARTHDATA_PASSWORD"):
        return EarthdataLogin("environment", "EARTHDATA_USERNAME/EARTHDATA_PASSWORD")
    netrc_path = Path(os.environ.get("NETRC", _home() / ".netrc"))
    if netrc_path.is_file():
        try:
            if netrc.netrc(netrc_path).authenticators(EARTHDATA_HOST):
                return EarthdataLogin("netrc", str(netrc_path))
        except (netrc.NetrcParseError, OSError):
            raise MissingCredentials(f"{netrc_path} cannot be parsed; {EARTHDATA_HINT}") from None
    raise MissingCredentials(f"no NASA Earthdata credentials: {EARTHDATA_HINT}")


def _read_cdsapirc(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def cds_credentials() -> CdsCredentials:
    key = os.environ.get("CDSAPI_KEY")
    if key:
        return CdsCredentials(os.environ.get("CDSAPI_URL", DEFAULT_CDS_URL), key, "CDSAPI_URL/CDSAPI_KEY")
    rc = Path(os.environ.get("CDSAPI_RC", _home() / ".cdsapirc"))
    if rc.is_file():
        values = _read_cdsapirc(rc)
        if values.get("key"):
            return CdsCredentials(values.get("url", DEFAULT_CDS_URL), values["key"], str(rc))
        raise MissingCredentials(f"{rc} has no 'key:' line; {CDS_HINT}")
    raise MissingCredentials(f"no Copernicus CDS credentials: {CDS_HINT}")


def secret_values() -> list[str]:
    """Every credential value visible to this process, for redaction and for tests to search for."""
    values = [os.environ.get(k, "") for k in ("EARTHDATA_TOKEN", "EARTHDATA_PASSWORD", "CDSAPI_KEY")]
    rc = Path(os.environ.get("CDSAPI_RC", _home() / ".cdsapirc"))
    try:
        values.append(_read_cdsapirc(rc).get("key", "") if rc.is_file() else "")
    except OSError:
        pass
    netrc_path = Path(os.environ.get("NETRC", _home() / ".netrc"))
    try:
        auth = netrc.netrc(netrc_path).authenticators(EARTHDATA_HOST) if netrc_path.is_file() else None
        if auth and auth[2]:
            values.append(auth[2])
    except (netrc.NetrcParseError, OSError):
        pass
    return [v for v in values if v and len(v) >= 4]


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def _secret_value(block: str) -> Any:
    """The value a Prefect Secret block holds: a token string or a JSON object, as stored."""
    from prefect.blocks.system import Secret

    # Prefect types Block.load as `Secret | Coroutine` (sync-or-async); called outside an event loop,
    # as here, it returns the block.
    return cast("Secret[Any]", Secret.load(block)).get()


def apply_secret_blocks(earthdata_block: str | None, cds_block: str | None) -> list[str]:
    """Load credentials kept in Prefect Secret blocks into this process's environment.

    A block holds either a token string or a JSON object: Earthdata {"username", "password"} or
    {"token"}; CDS {"url", "key"} or just the key. Returns the names of the blocks used.
    """
    used = []
    if earthdata_block:
        value = _secret_value(earthdata_block)
        if isinstance(value, dict) and value.get("username"):
            os.environ["EARTHDATA_USERNAME"] = str(value["username"])
            os.environ["EARTHDATA_PASSWORD"] = str(value.get("password", ""))
        else:
            os.environ["EARTHDATA_TOKEN"] = str(value.get("token") if isinstance(value, dict) else value)
        used.append(earthdata_block)
    if cds_block:
        value = _secret_value(cds_block)
        if isinstance(value, dict):
            if value.get("url"):
                os.environ["CDSAPI_URL"] = str(value["url"])
            os.environ["CDSAPI_KEY"] = str(value.get("key", ""))
        else:
            os.environ["CDSAPI_KEY"] = str(value)
        used.append(cds_block)
    return used
