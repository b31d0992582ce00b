"""The OpenAPI document: every route lists each status it can answer with, each problem code with an example;
bodies the service parses itself are documented by reference to their models."""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from wallet.errors import CODES, PROBLEM_MEDIA_TYPE, problem
from wallet.http.documents import Problem
from wallet.models import IDEMPOTENCY_KEY_PATTERN

JSON = "application/json"
COMMON_CODES = ("unauthenticated", "forbidden", "rate_limited", "unavailable")

# Models of the bodies routes parse themselves (strict JSON, see body.py): added to the components by install().
_body_models: dict[str, type[BaseModel]] = {}


def problems(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The problem documents a route can answer with, grouped by status, one example per code."""
    docs: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, title = CODES[code]
        entry = docs.setdefault(
            status,
            {
                "description": title,
                "model": Problem,
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}, "examples": {}}},
            },
        )
        if title not in entry["description"]:
            entry["description"] += f" / {title}"
        entry["content"][PROBLEM_MEDIA_TYPE]["examples"][code] = {"value": problem(code, f"Example: {title.lower()}.")}
    return docs


def responses(status: int, model: type[BaseModel], description: str, *codes: str) -> dict[int | str, dict[str, Any]]:
    """The success of an authenticated route, and its problems (those of every such route included)."""
    return {status: {"model": model, "description": description}, **problems(*COMMON_CODES, *codes)}


def body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` of a route whose body is `model`."""
    _body_models[model.__name__] = model
    return {
        "requestBody": {
            "required": required,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 255},
    "description": "Makes retries safe: the same key and body replay the first response.",
}


def install(app: FastAPI) -> None:
    """Completes the generated document: body models in the components, and no default 422 (FastAPI documents
    an HTTPValidationError as application/json that this service never sends: its 422s are problem documents,
    documented per route where they can happen)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operations in schema["paths"].values():
                for operation in operations.values():
                    content = operation.get("responses", {}).get("422", {}).get("content", {})
                    content.pop(JSON, None)
                    if "422" in operation.get("responses", {}) and not content:
                        del operation["responses"]["422"]
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            models: list[type[BaseModel]] = [*_body_models.values(), Problem]
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
