"""Offline validation of the archive's STAC: schemas from local copies, plus archive checks.

pystac ships the core STAC schemas but fetches extension schemas over HTTP, which the
production machines cannot do. Here every schema comes from pystac's copies or from
stac_schemas/ (keyed by each file's $id); a schema that is in neither is reported as a
problem instead of being fetched. Beyond the schemas, the checks cover what analysts trip
over: assets that are missing, absolute links, items outside the collection's extent.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
from pystac.errors import STACValidationError
from pystac.stac_object import STACObjectType
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.schema_uri_map import DefaultSchemaUriMap
from pystac.validation.stac_validator import STACValidator
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7

SCHEMA_DIR = Path(__file__).parent / "stac_schemas"


class SchemaUnavailable(LookupError):
    """A schema the document names is neither shipped by pystac nor in stac_schemas/."""

    def __init__(self, uri: str) -> None:
        super().__init__(
            f"schema {uri} is not available offline (add a copy to {SCHEMA_DIR}, keyed by its $id)"
        )
        self.uri = uri


def _schema_key(uri: str) -> str:
    return uri.rstrip("#")


@lru_cache(maxsize=1)
def _offline_schemas() -> dict[str, dict[str, Any]]:
    schemas = {_schema_key(uri): schema for uri, schema in get_local_schema_cache().items()}
    for file in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(file.read_text())
        schemas[_schema_key(schema["$id"])] = schema
    return schemas


class OfflineSTACValidator(STACValidator):
    """Validates against pystac's core schemas and the copies in stac_schemas/, never the network.

    pystac's own validator fetches extension schemas over HTTP; here an unknown schema is a
    validation problem instead (SchemaUnavailable).
    """

    def __init__(self) -> None:
        self._schemas = _offline_schemas()
        self._uri_map = DefaultSchemaUriMap()
        # `retrieve` is referencing's documented keyword (the attrs field `_retrieve`); mypy's attrs
        # plugin does not see the alias.
        self._registry: Registry = Registry(retrieve=self._refuse).with_resources(  # type: ignore[call-arg]
            (uri, Resource.from_contents(schema, default_specification=DRAFT7))
            for uri, schema in self._schemas.items()
        )

    @staticmethod
    def _refuse(uri: str) -> Resource:
        raise SchemaUnavailable(uri)

    def check_against(self, stac_dict: dict[str, Any], schema_uri: str) -> str:
        """Validate against one schema; raises STACValidationError or SchemaUnavailable."""
        schema = self._schemas.get(_schema_key(schema_uri))
        if schema is None:
            raise SchemaUnavailable(schema_uri)
        validator_class = jsonschema.validators.validator_for(schema)
        validator = validator_class(schema, registry=self._registry)
        try:
            errors = list(validator.iter_errors(stac_dict))
        except Unresolvable as exc:  # a $ref to a schema we have no copy of
            raise SchemaUnavailable(str(getattr(exc, "ref", exc))) from exc
        if errors:
            raise STACValidationError(schema_uri, source=errors)
        return schema_uri

    def core_schema_uri(self, stac_object_type: STACObjectType, stac_version: str) -> str:
        schema_uri = self._uri_map.get_object_schema_uri(stac_object_type, stac_version)
        if schema_uri is None:
            raise SchemaUnavailable(f"the core {stac_object_type} schema of STAC {stac_version!r}")
        return schema_uri

    # The STACValidator interface, so pystac.validation.validate_dict(..., validator=...) works too.
    def validate_core(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: STACObjectType,
        stac_version: str,
        href: str | None = None,
    ) -> str:
        return self.check_against(stac_dict, self.core_schema_uri(stac_object_type, stac_version))

    def validate_extension(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: STACObjectType,
        stac_version: str,
        extension_id: str,
        href: str | None = None,
    ) -> str:
        return self.check_against(stac_dict, extension_id)


_OBJECT_TYPES = {
    "Feature": STACObjectType.ITEM,
    "Collection": STACObjectType.COLLECTION,
    "Catalog": STACObjectType.CATALOG,
}


def _most_specific(error: jsonschema.exceptions.ValidationError) -> jsonschema.exceptions.ValidationError:
    # A failed oneOf (item branch vs collection branch) says only "not valid under any of the
    # given schemas" about the whole document; the deepest failure inside it names the field.
    if not error.context:
        return error
    return max((_most_specific(e) for e in error.context), key=lambda e: len(e.absolute_path))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: STACValidationError) -> list[str]:
    errors = exc.source if isinstance(exc.source, list) else []
    if not errors:
        return [f"does not conform to {exc}"]
    return [
        f"does not conform to {exc}: at {leaf.json_path}: {_short(leaf.message)}"
        for leaf in dict.fromkeys(_most_specific(e) for e in errors)
    ]


def _validate_document(stac_dict: dict[str, Any], file: Path, validator: OfflineSTACValidator) -> list[str]:
    object_type = _OBJECT_TYPES.get(stac_dict.get("type", ""))
    if object_type is None:
        return [f"{file}: 'type' is {stac_dict.get('type')!r}, not a STAC Item/Collection/Catalog"]
    extensions = stac_dict.get("stac_extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        return [f"{file}: stac_extensions must be a list of schema URIs"]
    version = str(stac_dict.get("stac_version", ""))
    problems = []
    # Each schema separately, so one broken field does not hide problems under another schema.
    try:
        schema_uris = [validator.core_schema_uri(object_type, version), *extensions]
    except SchemaUnavailable as exc:
        return [f"{file}: {exc}"]
    for schema_uri in schema_uris:
        try:
            validator.check_against(stac_dict, schema_uri)
        except STACValidationError as exc:
            problems += [f"{file}: {text}" for text in _describe(exc)]
        except SchemaUnavailable as exc:
            problems.append(f"{file}: {exc}")
    return problems


def _load(file: Path) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        document = json.loads(file.read_text())
    except FileNotFoundError:
        return None, [f"{file}: missing"]
    except (OSError, ValueError) as exc:
        return None, [f"{file}: not readable JSON: {exc}"]
    if not isinstance(document, dict):
        return None, [f"{file}: not a JSON object"]
    return document, []


def _self_contained_problems(document: dict[str, Any], file: Path) -> list[str]:
    problems = []
    for link in document.get("links", []):
        href = str(link.get("href", ""))
        if link.get("rel") == "self":
            problems.append(f"{file}: has a self link; a self-contained catalog has none")
        elif "://" in href or href.startswith("/"):
            problems.append(f"{file}: link {link.get('rel')} -> {href} is not relative")
    return problems


def _parse_time(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    # STAC times are UTC; a missing offset must not make the comparisons below raise.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _item_problems(item: dict[str, Any], file: Path, collection: dict[str, Any]) -> list[str]:
    """What the schemas cannot see: missing assets, items outside the collection's extent."""
    problems = []
    for key, asset in (item.get("assets") or {}).items():
        href = str(asset.get("href", ""))
        if "://" in href or href.startswith("/"):
            problems.append(f"{file}: asset {key} href {href} is not relative")
        elif not (file.parent / href).is_file():
            problems.append(f"{file}: asset {key} -> {href} does not exist")
    try:
        west, south, east, north = (float(v) for v in collection["extent"]["spatial"]["bbox"][0])
        start, end = (_parse_time(t) for t in collection["extent"]["temporal"]["interval"][0])
        i_west, i_south, i_east, i_north = (float(v) for v in item["bbox"])
    except (KeyError, IndexError, TypeError, ValueError):
        return problems  # the schema checks already report a malformed extent or bbox
    if not (west <= i_west and south <= i_south and i_east <= east and i_north <= north):
        problems.append(f"{file}: bbox {item['bbox']} outside the collection's {[west, south, east, north]}")
    properties = item.get("properties") or {}
    moments = [m for m in (_parse_time(properties.get(f)) for f in ("start_datetime", "datetime", "end_datetime"))
               if m is not None]
    if moments and ((start and min(moments) < start) or (end and max(moments) > end)):
        problems.append(
            f"{file}: {min(moments).isoformat()}..{max(moments).isoformat()} outside the collection's"
            f" temporal extent {start and start.isoformat()}..{end and end.isoformat()}"
        )
    return problems


def validate_stac(collection_file: Path | str) -> list[str]:
    """Problems with a region's collection and every item it lists; empty when sound. Offline."""
    collection_file = Path(collection_file)
    validator = OfflineSTACValidator()
    collection, problems = _load(collection_file)
    if collection is None:
        return problems
    problems += _validate_document(collection, collection_file, validator)
    problems += _self_contained_problems(collection, collection_file)

    seen: set[Path] = set()
    for link in collection.get("links", []):
        if link.get("rel") != "item":
            continue
        href = str(link.get("href", ""))
        if "://" in href or href.startswith("/"):
            continue  # already reported as not self-contained
        item_file = (collection_file.parent / href).resolve()
        if item_file in seen:
            problems.append(f"{collection_file}: item {href} is listed twice")
            continue
        seen.add(item_file)
        item, load_problems = _load(item_file)
        problems += load_problems
        if item is None:
            continue
        problems += _validate_document(item, item_file, validator)
        problems += _self_contained_problems(item, item_file)
        problems += _item_problems(item, item_file, collection)
        if item.get("collection") != collection.get("id"):
            problems.append(
                f"{item_file}: collection {item.get('collection')!r}, expected {collection.get('id')!r}"
            )
    return problems
