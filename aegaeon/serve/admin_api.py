"""The admin routes of the HTTP API: add a model to the running node, or drain and remove one.

POST /v1/admin/models `{"name": ..., "path": ...}` (a checkpoint directory on the node, or a hub id in its
local Hugging Face cache) and DELETE /v1/admin/models/{name}?drain_timeout=S. The API key guards them as it
guards every route; a server without a key serves them only on a loopback address, so that nobody else on
the network can make it read files. GET /v1/models lists the node's models as they are after a change.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import MutableMapping
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from aegaeon.config.pool import resolve_path
from aegaeon.errors import AegaeonError
from aegaeon.serve.api_errors import ApiError
from aegaeon.serve.api_schema import check_unicode
from aegaeon.serve.model_admin import ModelChangeError, ModelChanges
from aegaeon.serve.served_model import ServedModel

MAX_NAME_CHARS = 256
MAX_DRAIN_SECONDS = 3600.0


class AddModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr = Field(min_length=1, max_length=MAX_NAME_CHARS)
    path: StrictStr = Field(min_length=1, max_length=4096)

    @field_validator("name", "path")
    @classmethod
    def _unicode(cls, value: str) -> str:
        return check_unicode(value)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_admin_routes(
    app: FastAPI,
    changes: ModelChanges,
    served: MutableMapping[str, ServedModel],
    host: str,
    api_key: str | None,
) -> None:
    def check_allowed() -> None:
        if api_key is None and not _loopback(host):
            raise ApiError(
                403,
                "changing models needs an API key on a server that listens beyond loopback: start it "
                "with --api-key",
                None,
                "admin_disabled",
                "permission_error",
            )

    @app.post("/v1/admin/models")
    async def add_model(body: AddModelBody) -> dict:
        check_allowed()
        name = body.name.strip()
        if not name or name != body.name or any(c in name for c in "\r\n\t"):
            raise ApiError(
                400, f"model name {body.name!r} has surrounding or control whitespace", "name"
            )
        try:
            path = resolve_path(body.path)
        except AegaeonError as err:
            raise ApiError(400, str(err), "path", "model_not_found") from None
        if name in served:
            raise ApiError(
                409, f"model {name} is already served: remove it first", "name", "model_exists"
            )
        try:
            model = await asyncio.to_thread(ServedModel, name, Path(path))
        except Exception as err:  # noqa: BLE001 - any unreadable tokenizer or config is the request's fault
            raise ApiError(
                400,
                f"model {name}: its tokenizer or config at {path} cannot be read: {type(err).__name__}: {err}",
                "path",
            ) from None
        try:
            added = await asyncio.to_thread(changes.add, name, path)
        except ModelChangeError as err:
            raise ApiError(err.status, str(err), "name", err.code) from None
        except AegaeonError as err:
            raise ApiError(400, str(err), "path") from None
        served[name] = model
        return {"id": name, "object": "model", "created": 0, "owned_by": "aegaeon", **asdict(added)}

    @app.delete("/v1/admin/models/{name:path}")
    async def remove_model(name: str, drain_timeout: float = 60.0) -> dict:
        check_allowed()
        if not 0 <= drain_timeout <= MAX_DRAIN_SECONDS:
            raise ApiError(
                400, f"drain_timeout must be in [0, {MAX_DRAIN_SECONDS:g}] seconds", "drain_timeout"
            )
        if name not in served and name not in changes.node.good_models:
            raise ApiError(
                404,
                f"The model `{name}` does not exist: see GET /v1/models",
                "name",
                "model_not_found",
            )
        model = served.pop(name, None)  # new requests of it are 404s from now on
        try:
            removed = await asyncio.to_thread(changes.remove, name, drain_timeout)
        except ModelChangeError as err:
            if model is not None:
                served[name] = model
            raise ApiError(err.status, str(err), "name", err.code) from None
        return {"id": name, "object": "model", "deleted": True, **asdict(removed)}
