"""An httpx response hook that holds every JSON success response to the schema the app's OpenAPI document
publishes for its route, so the API tests check the published response bodies as a side effect."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema_rs  # schemathesis's JSON Schema validator (the fuzz test validates with it too)
from fastapi import FastAPI


def validating_hook(app: FastAPI) -> Callable[[httpx.Response], Awaitable[None]]:
    doc = app.openapi()
    routes = [
        (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), operations)
        for template, operations in doc["paths"].items()
    ]
    checked: list[str] = []

    async def hook(response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300 or "json" not in response.headers.get("content-type", ""):
            return
        await response.aread()
        schema = _schema(routes, response.request.method.lower(), response.request.url.path, response.status_code)
        if schema is None:
            return
        jsonschema_rs.Draft202012Validator(schema).validate(response.json())
        checked.append(f"{response.request.method} {response.request.url.path}")

    hook.checked = checked  # type: ignore[attr-defined]
    return hook


def _schema(routes: list[tuple[re.Pattern[str], Any]], method: str, path: str, status: int) -> Any:
    for pattern, operations in routes:
        if pattern.match(path) and method in operations:
            declared = operations[method].get("responses", {}).get(str(status), {})
            return declared.get("content", {}).get("application/json", {}).get("schema")
    return None
