"""Every operation, request body and schema of /api/openapi.json has an example, and every example fits its schema.

The document is OpenAPI 3.0, whose schemas are JSON Schema with `nullable`; they are turned into JSON Schema
2020-12 to validate the examples with jsonschema, formats (uuid, date-time, ...) included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:clara:openapi"
METHODS = ("get", "post", "put", "patch", "delete")
SCHEMA_MAPS = ("properties", "patternProperties")
SCHEMA_ONE = ("items", "additionalProperties", "not")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
# jsonschema checks date-time only with an optional package; Clara's timestamps are what fromisoformat reads.
FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(lambda value: not isinstance(value, str)
                                               or datetime.fromisoformat(value).tzinfo is not None)


@pytest.fixture
def spec(client) -> dict[str, Any]:
    return client.get("/api/openapi.json").get_json()


def to_json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema 2020-12: `nullable` becomes a null type, refs point into the document."""
    if not isinstance(schema, dict):
        return schema
    out = {key: value for key, value in schema.items() if key not in ("example", "nullable", "$ref")}
    if "$ref" in schema:
        out["$ref"] = BASE + schema["$ref"]
    for key in SCHEMA_MAPS:
        if key in schema:
            out[key] = {name: to_json_schema(sub) for name, sub in schema[key].items()}
    for key in SCHEMA_ONE:
        if key in schema:
            out[key] = to_json_schema(schema[key])
    for key in SCHEMA_LISTS:
        if key in schema:
            out[key] = [to_json_schema(sub) for sub in schema[key]]
    if schema.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def validator_of(spec: dict[str, Any]) -> Callable[[Any, dict[str, Any]], list[str]]:
    """A function giving the problems of an example against an OpenAPI schema of this document."""
    converted = {"components": {"schemas": {name: to_json_schema(schema)
                                            for name, schema in spec["components"]["schemas"].items()}}}
    registry = Registry().with_resource(BASE, Resource.from_contents(converted, default_specification=DRAFT202012))

    def _problems(example: Any, schema: dict[str, Any]) -> list[str]:
        checker = Draft202012Validator(to_json_schema(schema), registry=registry,
                                       format_checker=FORMATS)
        return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
                for error in checker.iter_errors(example)]

    return _problems


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def responses(spec: dict[str, Any], operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """An operation's responses, shared ones looked up in components."""
    for status, response in operation["responses"].items():
        if "$ref" in response:
            response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
        yield status, response


def bodies(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every media type object of a request or response body, named by where it is."""
    for name, operation in operations(spec):
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            yield f"{name} request {media_type}", media
        for status, response in responses(spec, operation):
            for media_type, media in response.get("content", {}).items():
                yield f"{name} {status} {media_type}", media


def examples_of(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


def is_binary(schema: dict[str, Any]) -> bool:
    """A file download: there is no example to show of its bytes."""
    return schema.get("type") == "string" and schema.get("format") == "binary"


def schema_examples(schema: Any, where: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every example inside a schema, its properties' and items' too, with the (sub)schema it must fit."""
    if not isinstance(schema, dict):
        return
    if "example" in schema:
        yield where, schema["example"], schema
    for key in SCHEMA_MAPS:
        for name, sub in schema.get(key, {}).items():
            yield from schema_examples(sub, f"{where}.{name}")
    for key in SCHEMA_ONE:
        yield from schema_examples(schema.get(key), f"{where}[{key}]")
    for key in SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key, [])):
            yield from schema_examples(sub, f"{where}.{key}[{index}]")


def test_every_response_and_request_body_has_an_example(spec):
    missing = [where for where, media in bodies(spec) if not examples_of(media)
               and not (" request " not in where and is_binary(media.get("schema", {})))]
    assert not missing, "bodies without an example:\n" + "\n".join(missing)


def test_every_documented_response_has_a_body_or_is_empty_on_purpose(spec):
    empty = [f"{name} {status}" for name, operation in operations(spec)
             for status, response in responses(spec, operation) if not response.get("content") and status != "204"]
    assert not empty, "responses documented without a body:\n" + "\n".join(empty)


def test_every_component_schema_has_an_example(spec):
    missing = [name for name, schema in spec["components"]["schemas"].items() if "example" not in schema]
    assert not missing, f"component schemas without an example: {missing}"


def test_every_example_fits_its_schema(spec):
    problems_of = validator_of(spec)
    found = []
    for where, media in bodies(spec):
        found += [(where, example, media["schema"]) for example in examples_of(media) if "schema" in media]
    for name, schema in spec["components"]["schemas"].items():
        found += list(schema_examples(schema, f"components.{name}"))
    for name, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            if "example" in parameter:
                found.append((f"{name} parameter {parameter['name']}", parameter["example"], parameter["schema"]))
    problems = [f"{where}: {problem}" for where, example, schema in found for problem in problems_of(example, schema)]
    assert len(found) > 100, f"only {len(found)} examples were checked"
    assert not problems, "examples that do not fit their schema:\n" + "\n".join(problems)


def test_validation_error_examples_name_their_fields(spec):
    """A 422's example shows what a client most needs: which field is wrong, in the message and in details."""
    vague = []
    for name, operation in operations(spec):
        for status, response in responses(spec, operation):
            if status != "422":
                continue
            for example in examples_of(response["content"]["application/json"]):
                error = example["error"]
                fields = error["details"].get("fields") or {}
                named = error["code"] != "validation_error" or all(field in error["message"] for field in fields)
                if not fields or not named:
                    vague.append(f"{name}: {error}")
    assert not vague, "422 examples that name no field:\n" + "\n".join(vague)
