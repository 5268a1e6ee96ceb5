"""``ctpreg serve`` (the registry over HTTP) and ``ctpreg tokens`` (the scoped API tokens it checks)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.tokens import SCOPES, check_scope, parse_expiry

from ..options import JsonFlag
from ..output import emit_json, info, table
from ..state import state

SERVER_MODULES = ("fastapi", "uvicorn")
tokens_app = typer.Typer(help="API tokens for `ctpreg serve`: read, publish or admin scope.", no_args_is_help=True)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind (an IP address, or localhost).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8200,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes sharing the DB and store.")] = 1,
    behind_tls_proxy: Annotated[bool, typer.Option(
        "--behind-tls-proxy",
        help="Acknowledge that a TLS-terminating proxy fronts this server: needed to bind a non-loopback address "
             "without --ssl-certfile (tokens must never cross a network in clear text).",
    )] = False,
    ssl_certfile: Annotated[Path | None, typer.Option("--ssl-certfile", help="Serve HTTPS with this certificate.")]
    = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="The certificate's private key.")] = None,
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", min=1024, max=1 << 30, help="Largest request body accepted (413 above).",
    )] = 16 << 20,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="One JSON line per request on stderr (never a token).",
    )] = True,
    keep_mb: Annotated[int, typer.Option(
        "--keep-mb", min=0, max=1 << 16,
        help="Per worker, keep this many MB of read answers (resolve, show, objects, ...) and send them again until "
             "the DB changes (checked on every request, so never stale); 0 computes every answer.",
    )] = 64,
    graceful_seconds: Annotated[int, typer.Option(
        "--graceful-seconds", min=0, max=3600, help="On SIGTERM/SIGINT, let requests in flight finish this long.",
    )] = 30,
) -> None:
    """Serve this registry (CTPREG_DB_URL + CTPREG_STORE_URL) over HTTP, every endpoint behind a scoped token.

    Create the first token with direct access, then point clients at the server:
    ctpreg tokens create --scope admin --name ops;
    ctpreg serve --port 8200 --workers 2;
    CTPREG_URL=http://127.0.0.1:8200 CTPREG_TOKEN=ctp_... ctpreg resolve --model llama-7b --bits 3
    """
    from ctpreg.trainer.deps import require

    require(*SERVER_MODULES, extra="serve")
    settings = state(ctx).settings
    if settings.url is not None:
        raise InvalidInput("CTPREG_URL is set: `ctpreg serve` serves a DB and store itself; unset CTPREG_URL")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise InvalidInput("give --ssl-certfile and --ssl-keyfile together")
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not path.is_file():
            raise InvalidInput(f"{path} is not a file")
    _check_bind(host, tls=ssl_certfile is not None or behind_tls_proxy)
    registry = state(ctx).registry
    registry.list_models()  # the DB answers and its schema is current, or one clear error before binding
    registry.store.exists("ready-probe")
    import uvicorn

    from ctpreg.integrations.server import ACCESS_LOG_ENV, KEEP_ENV, MAX_BODY_ENV

    os.environ[MAX_BODY_ENV] = str(max_body_bytes)
    os.environ[ACCESS_LOG_ENV] = "1" if access_log else "0"
    os.environ[KEEP_ENV] = str(keep_mb << 20)
    scheme = "https" if ssl_certfile else "http"
    info(f"serving {settings.db_url.split('://')[0]} + {settings.store_url.split('://')[0]} registry at "
         f"{scheme}://{host}:{port} with {workers} worker(s)")
    uvicorn.run(
        "ctpreg.integrations.server:app_from_env", factory=True, host=host, port=port, workers=workers,
        access_log=False, log_level="warning", timeout_graceful_shutdown=graceful_seconds,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None, ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


def _check_bind(host: str, *, tls: bool) -> None:
    """Loopback binds freely; any other address only with TLS in front (its own certificate, or a proxy's)."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--host {host!r} is not an IP address (or localhost)") from None
    if not address.is_loopback and not tls:
        raise InvalidInput(
            f"refusing to bind {host} without TLS: tokens would cross the network in clear text. Give "
            "--ssl-certfile/--ssl-keyfile, or --behind-tls-proxy if a TLS-terminating proxy fronts this server"
        )


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option(help=f"One of {', '.join(SCOPES)} (each includes the ones before).")],
    name: Annotated[str, typer.Option(help="Who or what holds it, e.g. inference-fleet.")] = "token",
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d or 12h (default: no expiry).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print it once: only its hash is stored, so it cannot be shown again."""
    record, value = state(ctx).registry.create_token(
        scope=check_scope(scope), name=name, expires_at=parse_expiry(expires)
    )
    if as_json:
        emit_json({**record.to_dict(), "token": value})
        return
    until = f", expires {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
    info(f"token {record.public_id} ({record.scope}, {record.name}{until}); shown once, store it now:")
    typer.echo(value)


@tokens_app.command("list")
def tokens_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tokens (never their values)."""
    records = state(ctx).registry.list_tokens()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    table(f"{len(records)} token(s)", ["id", "name", "scope", "state", "created", "by", "expires"], [
        (r.public_id, r.name, r.scope, r.state(), f"{r.created_at:%Y-%m-%d %H:%M}", r.created_by,
         f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "never") for r in records
    ])


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id (`ctpreg tokens list`).")],
) -> None:
    """Revoke a token: every request with it is refused (401) from now on."""
    record = state(ctx).registry.revoke_token(token_id)
    info(f"revoked {record.public_id} ({record.scope}, {record.name})")
