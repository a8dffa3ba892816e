"""JSON Schemas of every file metcli writes or reads as configuration.

The schemas ship as package data in ``metcli.io.schemas`` (the ``schemas/`` folder of
the source tree). Tables have one schema for a row; :func:`validate_rows` checks
the column set and every row before a table is written.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from metcli.core.errors import SchemaError


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """The schema ``<name>.schema.json`` shipped with metcli."""
    try:
        text = resources.files("metcli._schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    except FileNotFoundError:
        raise SchemaError(f"no schema named {name!r} ships with metcli") from None
    return json.loads(text)


def available() -> list[str]:
    return sorted(
        p.name[: -len(".schema.json")]
        for p in resources.files("metcli._schemas").iterdir()
        if p.name.endswith(".schema.json")
    )


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _path_of(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(obj: Any, name: str, *, where: str | Path | None = None) -> None:
    """Raise :class:`SchemaError` if ``obj`` does not follow the schema ``name``."""
    validator = _validator(name)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SchemaError(
            f"does not follow the {name} schema at {_path_of(first)}: {first.message}{more}",
            path=where,
            fix="correct the value or report a bug if metcli wrote it",
        )


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    name: str,
    *,
    where: str | Path | None = None,
) -> None:
    """Check the columns against the schema's required/allowed ones, then every row."""
    schema = load_schema(name)
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise SchemaError(
            f"table lacks required column(s) {', '.join(missing)} of the {name} schema",
            path=where,
            fix="give the table as the metcli command that makes it wrote it "
            "(its columns are in schemas/)",
        )
    if schema.get("additionalProperties") is False:
        extra = [
            c
            for c in columns
            if c not in properties
            and not any(_matches(p, c) for p in schema.get("patternProperties", {}))
        ]
        if extra:
            raise SchemaError(
                f"table has column(s) {', '.join(extra)} that the {name} schema does not allow",
                path=where,
                fix="remove those columns, or give the table the metcli command wrote",
            )
    validator = _validator(name)
    for number, row in enumerate(rows, start=2):
        record = {c: _plain(row.get(c)) for c in columns}
        errors = list(validator.iter_errors(record))
        if errors:
            first = errors[0]
            raise SchemaError(
                f"line {number} does not follow the {name} schema at "
                f"{_path_of(first)}: {first.message}",
                path=where,
                fix="correct the value or report a bug if metcli wrote it",
            )


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def _plain(value: Any) -> Any:
    """numpy scalars and NaN to what JSON Schema understands (NaN -> None)."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
