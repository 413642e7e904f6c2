"""JSON as models write it: find it in prose, repair small slips, check it against a JSON Schema.

Pure functions, no I/O. The validator covers the subset of JSON Schema that
clients actually send for tools and ``response_format`` (pydantic, zod, MCP
servers): ``type`` (also as a list), ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``const``, ``anyOf``/``oneOf``/
``allOf``, local ``$ref`` into ``$defs``/``definitions``, and the usual bounds.
Keywords outside it are ignored, so an unusual schema errs on the side of
accepting. Its errors are short sentences, because they are fed back to the
model in a corrective turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(?:```|$)", re.S)
_BARE_WORDS = {"True": "true", "False": "false", "None": "null"}
_CLOSERS = {"{": "}", "[": "]"}
_MAX_NUMBER_CHARS = 400
_WORD, _KEY_END = re.compile(r"\w+"), re.compile(r"\s*:")


# --------------------------------------------------------------------------- finding and repairing


def json_candidates(text: str) -> Iterator[str]:
    """Stretches of ``text`` that may hold one JSON value: each fenced block, then each ``{``/``[`` run."""
    for match in _FENCE.finditer(text):
        body = match.group(1).strip()
        if body[:1] in ("{", "["):
            yield body
    # The next "{" and "[" are looked up again only once passed: text with many of one and none of
    # the other would otherwise be rescanned to its end for every candidate.
    brace, bracket = text.find("{"), text.find("[")
    while brace >= 0 or bracket >= 0:
        start = min(p for p in (brace, bracket) if p >= 0)
        end = _balanced_end(text, start)
        yield text[start:end]
        if 0 <= brace < end:
            brace = text.find("{", end)
        if 0 <= bracket < end:
            bracket = text.find("[", end)


def _balanced_end(text: str, start: int) -> int:
    """Index after the bracket that closes the one at ``start`` (end of text if it never closes)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def loads_lenient(text: str) -> Any:
    """``json.loads``, else the same after repairing common slips; raises ``ValueError`` if still bad.

    Repaired: trailing commas, Python's True/False/None, single-quoted strings
    (when the text has no double quotes), raw newlines inside strings, and
    brackets or a string left open at the end.
    """
    text = text.strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    if '"' not in text and "'" in text:
        text = text.replace("'", '"')
    try:
        return json.loads(_repair(text))
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def _repair(text: str) -> str:
    out: list[str] = []
    stack: list[str] = []
    in_string, escaped, i = False, False, 0
    comma = -1  # where in ``out`` a comma stands with only whitespace after it: O(1), not a walk back
    while i < len(text):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ch == "\n":
                ch = "\\n"
            out.append(ch)
            i += 1
            continue
        if ch in "}]":
            if comma >= 0:
                out[comma] = ""  # a trailing comma
            if stack and stack[-1] == ch:
                out.append(stack.pop())
            comma = -1  # an unmatched closer is dropped
        elif ch.isalpha() or ch == "_":
            word = _WORD.match(text, i).group(0)
            i += len(word)
            out.append(f'"{word}"' if _KEY_END.match(text, i) else _BARE_WORDS.get(word, word))  # unquoted key
            comma = -1
            continue
        elif not ch.isspace():
            in_string = in_string or ch == '"'
            if ch in "{[":
                stack.append(_CLOSERS[ch])
            comma = len(out) if ch == "," else -1
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    if in_string:
        out.append('"')
    elif comma >= 0:
        out[comma] = ""
    out.extend(reversed(stack))
    return "".join(out)


def extract_json(text: str) -> Any:
    """The first JSON object or array in a model's answer (fenced or not); ``ValueError`` if none."""
    for candidate in json_candidates(text):
        try:
            return loads_lenient(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON object found in the answer")


# --------------------------------------------------------------------------- validation

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "number": (int, float), "integer": (int,), "null": (type(None),),
}


def validate(value: Any, schema: Any, root: Any = None, path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema``, as short sentences (empty: it conforms)."""
    root = schema if root is None else root
    if schema is False:
        return [f"{path} is not allowed"]
    if not isinstance(schema, Mapping):
        return []
    schema = resolve_ref(schema, root)
    errors: list[str] = []
    for sub in schema.get("allOf") or ():
        errors += validate(value, sub, root, path)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and all(validate(value, o, root, path) for o in options):
            errors.append(f"{path} matches none of the allowed alternatives")
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(kinds, list) and kinds and not any(_is_type(value, k) for k in kinds):
        return errors + [f"{path} must be {' or '.join(kinds)}, not {_type_name(value)}"]
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        errors.append(f"{path} must be one of {json.dumps(schema['enum'], ensure_ascii=False)}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path} must be {json.dumps(schema['const'], ensure_ascii=False)}")
    if isinstance(value, dict):
        errors += _validate_object(value, schema, root, path)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, (Mapping, bool)):
            for n, item in enumerate(value):
                errors += validate(item, items, root, f"{path}[{n}]")
        errors += _bounds(len(value), schema, "minItems", "maxItems", path, "items")
    elif isinstance(value, str):
        errors += _bounds(len(value), schema, "minLength", "maxLength", path, "characters")
    elif _is_type(value, "number"):
        errors += _bounds(value, schema, "minimum", "maximum", path, "")
    return errors


def _validate_object(value: dict, schema: Mapping[str, Any], root: Any, path: str) -> list[str]:
    errors = []
    properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    for name in schema.get("required") or ():
        if name not in value:
            errors.append(f"{path}.{name} is required")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            errors += validate(item, properties[name], root, f"{path}.{name}")
        elif extra is False:
            errors.append(f"{path}.{name} is not an allowed property")
        elif isinstance(extra, Mapping):
            errors += validate(item, extra, root, f"{path}.{name}")
    return errors


def _bounds(size: Any, schema: Mapping[str, Any], low: str, high: str, path: str, unit: str) -> list[str]:
    errors = []
    unit = f" {unit}" if unit else ""
    if isinstance(schema.get(low), (int, float)) and size < schema[low]:
        errors.append(f"{path} must have at least {schema[low]}{unit}" if unit else f"{path} must be >= {schema[low]}")
    if isinstance(schema.get(high), (int, float)) and size > schema[high]:
        errors.append(f"{path} must have at most {schema[high]}{unit}" if unit else f"{path} must be <= {schema[high]}")
    return errors


def resolve_ref(schema: Mapping[str, Any], root: Any, depth: int = 0) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``); unknown refs accept anything."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or depth > 20:
        return schema
    target: Any = root
    if ref.startswith("#"):
        for part in [p for p in ref[1:].split("/") if p]:
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, Mapping) else None
    if not isinstance(target, Mapping):
        return {}
    merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return resolve_ref(merged, root, depth + 1)


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind not in ("boolean",):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__


# --------------------------------------------------------------------------- coercion


def coerce(value: Any, schema: Any, root: Any = None) -> Any:
    """Fix values a model typed loosely where the schema is clear: ``"3"`` for an integer,
    ``"true"`` for a boolean, an object or array sent as a JSON string. Anything else is kept."""
    root = schema if root is None else root
    if not isinstance(schema, Mapping):
        return value
    schema = resolve_ref(schema, root)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else (kinds if isinstance(kinds, list) else [])
    if isinstance(value, str) and kinds and "string" not in kinds:
        value = _from_string(value, kinds)
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        return {k: coerce(v, properties.get(k), root) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [coerce(v, schema["items"], root) for v in value]
    return value


def _from_string(text: str, kinds: list[str]) -> Any:
    stripped = text.strip()
    if "boolean" in kinds and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if len(stripped) <= _MAX_NUMBER_CHARS:  # int() refuses 4,300 digits and more; no tool wants them
        if "integer" in kinds and re.fullmatch(r"[-+]?[0-9]+", stripped):
            return int(stripped)
        if "number" in kinds and re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", stripped):
            return float(stripped)
    if "null" in kinds and stripped.lower() in ("null", "none"):
        return None
    if ("object" in kinds and stripped[:1] == "{") or ("array" in kinds and stripped[:1] == "["):
        try:
            return loads_lenient(stripped)
        except ValueError:
            return text
    return text
