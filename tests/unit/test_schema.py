"""JSON found in model answers, repaired and checked against schemas: tables of inputs and outputs."""

from __future__ import annotations

import pytest

from transform import json_schema as s


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": 1}', {"a": 1}),
    ('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}),
    ('```\n[{"x": null}]\n```', [{"x": None}]),
    ('The answer is {"a": {"b": "}"}} as asked.', {"a": {"b": "}"}}),
    ('{"a": 1,}', {"a": 1}),
    ('{"a": [1, 2,], }', {"a": [1, 2]}),
    ("{'a': 'b'}", {"a": "b"}),
    ('{"ok": True, "none": None}', {"ok": True, "none": None}),
    ('{city: "Paris", n: 2}', {"city": "Paris", "n": 2}),
    ('{"a": "line one\nline two"}', {"a": "line one\nline two"}),
    ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}),
    ('{"a": "unterminated', {"a": "unterminated"}),
    ('{"a": 1}}', {"a": 1}),
    ('{"n": 1e3}', {"n": 1000.0}),
])
def test_extract_json(text, value):
    assert s.extract_json(text) == value


@pytest.mark.parametrize("text", ["no json here", "", "{{{{", "```python\nprint(1)\n```"])
def test_extract_json_refuses_text_without_json(text):
    with pytest.raises(ValueError):
        s.extract_json(text)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "kind": {"enum": ["a", "b"]},
        "pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}},
}


@pytest.mark.parametrize(("value", "errors"), [
    ({"name": "Ann", "age": 3}, []),
    ({"name": "Ann", "age": 3, "pet": {"legs": 4}, "tags": ["x"], "kind": "a"}, []),
    ({"name": "Ann", "age": 3, "pet": None}, []),
    ({"name": "Ann"}, ["$.age is required"]),
    ({"name": "Ann", "age": "3"}, ["$.age must be integer, not string"]),
    ({"name": "Ann", "age": True}, ["$.age must be integer, not boolean"]),
    ({"name": "Ann", "age": 3.0}, []),
    ({"name": "", "age": -1}, ["$.name must have at least 1 characters", "$.age must be >= 0"]),
    ({"name": "Ann", "age": 3, "x": 1}, ["$.x is not an allowed property"]),
    ({"name": "Ann", "age": 3, "tags": ["a", 2, "c"]}, ["$.tags[1] must be string, not integer",
                                                        "$.tags must have at most 2 items"]),
    ({"name": "Ann", "age": 3, "kind": "z"}, ['$.kind must be one of ["a", "b"]']),
    ({"name": "Ann", "age": 3, "pet": {"legs": "four"}}, ["$.pet matches none of the allowed alternatives"]),
    ([], ["$ must be object, not array"]),
])
def test_validate(value, errors):
    assert s.validate(value, PERSON) == errors


@pytest.mark.parametrize(("schema", "value", "ok"), [
    ({}, {"anything": [1]}, True),
    (True, 5, True),
    (False, 5, False),
    ({"type": ["string", "null"]}, None, True),
    ({"type": "number"}, 2, True),
    ({"const": 3}, 4, False),
    ({"allOf": [{"$ref": "#/definitions/A"}], "definitions": {"A": {"type": "string"}}}, 1, False),
    ({"$ref": "#/$defs/missing"}, 1, True),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, {"a": 1, "b": "x"}, False),
    ({"type": "custom-unknown"}, 1, True),
])
def test_validate_edges(schema, value, ok):
    assert (s.validate(value, schema) == []) is ok


@pytest.mark.parametrize(("value", "expected"), [
    ({"name": "Ann", "age": "3"}, {"name": "Ann", "age": 3}),
    ({"name": "Ann", "age": " 7 ", "pet": '{"legs": "4"}'}, {"name": "Ann", "age": 7, "pet": '{"legs": "4"}'}),
    ({"name": 5, "age": "x"}, {"name": 5, "age": "x"}),
])
def test_coerce_fixes_only_clear_slips(value, expected):
    assert s.coerce(value, PERSON) == expected


@pytest.mark.parametrize(("schema", "value", "expected"), [
    ({"type": "boolean"}, "TRUE", True),
    ({"type": "number"}, "2.5", 2.5),
    ({"type": ["integer", "null"]}, "null", None),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": "1"}', {"a": 1}),
    ({"type": "array", "items": {"type": "integer"}}, '["1", 2]', [1, 2]),
    ({"type": "string"}, "3", "3"),
])
def test_coerce_scalars_and_json_strings(schema, value, expected):
    assert s.coerce(value, schema) == expected
