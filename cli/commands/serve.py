"""``ctpreg serve`` (the registry over HTTP) and ``ctpreg tokens`` (the scoped API tokens it checks)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import CtpregError, InvalidInput
from ctpreg.registry.tokens import SCOPES, check_scope, parse_expiry

from ..options import JsonFlag
from ..ports import check_port_free
from ..output import emit_json, info, table
from ..state import state

SERVER_MODULES = ("fastapi", "uvicorn", "gunicorn", "uvicorn_worker")
tokens_app = typer.Typer(help="API tokens for `ctpreg serve`: read, publish or admin scope.", no_args_is_help=True)


def _limit_help(name: str) -> str:
    from ctpreg.integrations.request_limits import RequestLimits

    return RequestLimits.__dataclass_fields__[name].metadata["help"].capitalize() + "."


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
    max_header_bytes: Annotated[int, typer.Option(
        "--max-header-bytes", min=1024, max=1 << 20, help=_limit_help("max_head_bytes"),
    )] = 16 << 10,
    max_headers: Annotated[int, typer.Option("--max-headers", min=1, max=10_000, help=_limit_help("max_headers"))]
    = 100,
    head_timeout: Annotated[float, typer.Option(
        "--head-timeout-seconds", min=0.1, max=3600, help=_limit_help("head_timeout_s"),
    )] = 10.0,
    keep_alive: Annotated[int, typer.Option(
        "--keep-alive-seconds", min=1, max=3600, help=_limit_help("keep_alive_s"),
    )] = 5,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="One JSON line per request on stderr (never a token).",
    )] = True,
    keep_mb: Annotated[int, typer.Option(
        "--keep-mb", min=0, max=1 << 16,
        help="Per worker, keep this many MB of read answers (resolve, show, objects, ...) and send them again until "
             "the DB changes (checked on every request, so never stale); 0 computes every answer.",
    )] = 64,
    graceful_seconds: Annotated[int, typer.Option(
        "--graceful-seconds", min=0, max=3600, help="On SIGTERM, let requests in flight finish this long.",
    )] = 30,
    docs: Annotated[bool, typer.Option(
        "--docs", help="Also serve the interactive API pages /docs and /redoc (they load scripts from a third-party "
                       "CDN; /openapi.json is always served).",
    )] = False,
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
    from ctpreg.integrations.request_limits import RequestLimits
    from ctpreg.integrations.supervisor import RegistryServer, ServeOptions

    options = ServeOptions(
        host=host, port=port, workers=workers, max_body_bytes=max_body_bytes, keep_bytes=keep_mb << 20,
        access_log=access_log, graceful_seconds=graceful_seconds, docs=docs, ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile, limits=RequestLimits(max_head_bytes=max_header_bytes, max_headers=max_headers,
                                                      head_timeout_s=head_timeout, keep_alive_s=keep_alive),
    )
    registry = state(ctx).registry
    registry.list_models()  # the DB answers and its schema is current, or one clear error before binding
    if settings.store_url == (settings.home / "objects").as_uri():
        (settings.home / "objects").mkdir(parents=True, exist_ok=True)  # the default store, like the embedded DB
    registry.store.check()  # its folder or bucket is there: a missing one is never taken for an empty store
    check_port_free(host, port)
    scheme = "https" if ssl_certfile else "http"
    info(f"serving {settings.db_url.split('://')[0]} + {settings.store_url.split('://')[0]} registry at "
         f"{scheme}://{host}:{port} with {workers} worker(s)")
    try:
        RegistryServer(settings, options).run()
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        # gunicorn's own codes (3: a worker could not boot, 4: the app could not load) mean other things to ctpreg
        raise CtpregError(f"the server stopped (gunicorn exit code {exc.code}); its log above says why") from None


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
