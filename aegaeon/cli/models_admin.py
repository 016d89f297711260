"""`aegaeon models list|add|remove`: change the models of a running `aegaeon serve` through its admin routes
(aegaeon.serve.admin_api)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import click

from aegaeon.cli.root import main
from aegaeon.config.env import env_str
from aegaeon.errors import RequestError

DEFAULT_URL = "http://127.0.0.1:8000"


def _call(url: str, api_key: str | None, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise RequestError(f"{method} {path}: HTTP {err.code}: {message}") from None
    except urllib.error.URLError as err:
        raise RequestError(
            f"no aegaeon server answers at {url} ({err.reason}): start one with `aegaeon serve`, or "
            f"give --url"
        ) from None


def _server_options(fn):
    fn = click.option(
        "--api-key",
        default=None,
        help="The server's API key [default: $AEGAEON_API_KEY].",
    )(fn)
    return click.option(
        "--url", default=DEFAULT_URL, show_default=True, help="The server's base URL."
    )(fn)


def _name_and_path(model: str) -> tuple[str, str]:
    """NAME=PATH, a directory (named after it), or a hub id (named by it); relative directories are made
    absolute here, since the server resolves paths on its own working directory."""
    name, sep, path = model.partition("=")
    if not sep:
        name, path = "", model
    local = Path(path).expanduser()
    if local.exists():
        path = str(local.resolve())
    if not name:
        name = local.name if local.exists() else path
    if not name or not path:
        raise click.BadParameter(f"{model!r}: give NAME=PATH, a directory or a hub id")
    return name, path


@main.group()
def models() -> None:
    """List, add or remove the models of a running server without restarting it."""


@models.command("list")
@_server_options
def list_models(url: str, api_key: str | None) -> None:
    """The models the server serves now."""
    reply = _call(url, api_key or env_str("AEGAEON_API_KEY"), "GET", "/v1/models")
    for model in reply["data"]:
        click.echo(f"{model['id']}\tcontext {model.get('max_model_len', '?')}")


@models.command("add")
@click.argument("model")
@_server_options
def add_model(model: str, url: str, api_key: str | None) -> None:
    """Load MODEL (NAME=PATH, a checkpoint directory, or a hub id in the server's local Hugging Face cache)
    into the server's host cache and serve it."""
    name, path = _name_and_path(model)
    reply = _call(
        url,
        api_key or env_str("AEGAEON_API_KEY"),
        "POST",
        "/v1/admin/models",
        {"name": name, "path": path},
    )
    click.echo(
        f"added {reply['id']} from {reply['path']}: {reply['weight_bytes'] / 2**20:.1f} MiB of weights "
        f"loaded in {reply['load_seconds']:.1f} s"
    )


@models.command("remove")
@click.argument("name")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 3600),
    default=60.0,
    show_default=True,
    help="Seconds to let the model's requests in flight finish; those still running then fail.",
)
@_server_options
def remove_model(name: str, drain_timeout: float, url: str, api_key: str | None) -> None:
    """Stop serving NAME: new requests get a 404 at once, those in flight finish (up to --drain-timeout),
    then the workers and the host cache let the model go."""
    path = (
        "/v1/admin/models/"
        + urllib.parse.quote(name, safe="")
        + f"?drain_timeout={drain_timeout:g}"
    )
    reply = _call(url, api_key or env_str("AEGAEON_API_KEY"), "DELETE", path)
    click.echo(f"removed {name}: {reply['drained']} requests drained, {reply['failed']} failed")
