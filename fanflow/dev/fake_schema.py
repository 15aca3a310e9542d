"""A deterministic value that satisfies a JSON schema, for the fake model server's structured answers.

Objects get every property (only the required ones once nesting is deep), strings ``"fake"`` (or
the first ``enum`` / ``const``, or a sample of a known ``format``), integers ``1``, numbers
``1.5`` (moved into ``minimum`` / ``maximum``), booleans ``true``, arrays one item (or
``minItems``), ``anyOf`` / ``oneOf`` their first option, ``allOf`` the merge of its parts.
Local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) are followed; recursion stops at a depth.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sample"]

_SHALLOW = 6  # from this depth: optional properties are left out, anyOf prefers null
_MAX_DEPTH = 24

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "fake@example.com",
    "uri": "https://example.com/fake",
    "url": "https://example.com/fake",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def sample(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid under ``schema`` (best effort: ``pattern`` and ``multipleOf`` are ignored).

    Args:
        schema: a JSON schema (a dict, or ``true``).
        root: the document ``$ref`` pointers resolve in (``schema`` itself by default).
        depth: nesting depth, for recursion.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "fake" if schema is True or schema == {} else None
    if isinstance(schema.get("$ref"), str):
        return sample(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            if depth >= _SHALLOW:
                options = [o for o in options if isinstance(o, dict) and o.get("type") == "null"] or options
            return sample(options[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        return sample(_merge_all_of(schema, root), root, depth + 1)
    return _typed(schema, root, depth)


def _typed(schema: dict[str, Any], root: Any, depth: int) -> Any:
    kind = _kind(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "fake"


def _kind(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0] if kinds else None
    if kind is None:
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
    return kind if isinstance(kind, str) else None


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        while isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = _resolve(root, part["$ref"])
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [name for name in schema.get("required") or [] if isinstance(name, str)]
    out: dict[str, Any] = {}
    for name, sub in properties.items():
        if depth >= _SHALLOW and name not in required:
            continue
        out[name] = sample(sub, root, depth + 1)
    for name in required:
        out.setdefault(name, "fake")
    return out


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    out = [sample(sub, root, depth + 1) for sub in prefix] if isinstance(prefix, list) else []
    low = schema.get("minItems", 0)
    low = low if isinstance(low, int) else 0
    high = schema.get("maxItems")
    wanted = max(low, 0 if depth >= _SHALLOW else 1)
    if isinstance(high, int):
        wanted = min(wanted, high)
    items = schema.get("items", True)
    while len(out) < wanted and items is not False:
        out.append(sample(items, root, depth + 1))
    return out


def _string(schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, "fake") if isinstance(fmt, str) else "fake"
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 1 if integer else 1.5
    step = 1 if integer else 0.5
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low, int | float) and value < low:
        value = low
    if isinstance(xlow, int | float) and not isinstance(xlow, bool) and value <= xlow:
        value = xlow + step
    if isinstance(high, int | float) and value > high:
        value = high
    if isinstance(xhigh, int | float) and not isinstance(xhigh, bool) and value >= xhigh:
        value = xhigh - step
    if integer:
        return int(value) if float(value).is_integer() else int(value) + 1
    return float(value)
