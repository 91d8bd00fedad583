"""Keep secrets out of logs, run params and tags.

Tracking URIs may carry a database password (postgresql://user:pw@host/db) or a token
(https://user:token@host); params and tags may come from settings that include credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|credential|auth",
                         re.IGNORECASE)
REDACTED = "***"


def redact_uri(uri: object) -> str:
    """'postgresql://u:pw@h/db' -> 'postgresql://u:***@h/db'; anything else unchanged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", str(uri))


def redact_mapping(values: Mapping[str, object] | None) -> dict[str, str]:
    """String values safe to log: secret-looking keys blanked, passwords cut out of URIs."""
    safe: dict[str, str] = {}
    for key, value in (values or {}).items():
        safe[str(key)] = REDACTED if _SECRET_KEY.search(str(key)) else redact_uri(value)
    return safe
