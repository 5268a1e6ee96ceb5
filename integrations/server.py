"""``ctpreg serve``: the registry over HTTP, thin over ``service.Registry`` and ``resolver.resolve``.

Every route checks a scoped API token (``registry.tokens``), calls the same service method the CLI calls with direct
access, and writes the result with the domain objects' own ``to_dict`` / ``registry.wire``. A ``CtpregError``
becomes a JSON error naming its class and exit code (``http_errors``: with the request's id, and nothing of where the
registry keeps its data), so ``RemoteRegistry`` raises the very same error and the CLI exits with the same code.
Objects are served only after their sha256 was verified, and only for a sha256 some prompt references. The
middleware (``middleware``) authenticates before a body is read and logs one JSON line per request, never a token;
``supervisor`` runs the app in worker processes.
"""


import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ctpreg.registry import errors
from ctpreg.registry.db.changes import change_marker
from ctpreg.registry.matcher import Target
from ctpreg.registry.refs import ALIAS_PATTERN, FINGERPRINT_PATTERN, NAME_PATTERN, REF_PATTERN
from ctpreg.registry.refs import check_fingerprint, check_model_name, check_text
from ctpreg.registry.records import BaseModelRecord
from ctpreg.registry.resolver import resolve
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import ADMIN, PUBLIC_ID_PATTERN, PUBLISH, READ, TokenRecord, authorize
from ctpreg.registry.wire import candidate_to_wire, evidence_to_wire, measurement_from_wire, target_from_wire

from . import api_models as api
from .answers import KeptAnswers
from .http_errors import Scrubber, log, request_id_of
from .middleware import AccessLog, Authenticate, BodyLimit, RequestIds

DEFAULT_MAX_BODY_BYTES = 16 << 20  # a 100 x 8192 float32 prompt is 3.3 MB
DEFAULT_KEEP_BYTES = 64 << 20
SHA256_PATTERN = "^[0-9a-f]{64}$"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # what a 405's Allow header may list
PAGE = 1000  # most prompt versions in one answer of /v1/prompts (the client pages through the rest)
_ERROR = {"model": api.ErrorOut}
ERRORS = {status: {**_ERROR, "description": text} for status, text in {
    400: "Invalid input", 401: "Missing, unknown, expired or revoked token", 403: "Token scope too narrow",
    413: "Body too large", 503: "Database or object store unavailable",
}.items()}
NOT_FOUND = {404: {**_ERROR, "description": "No such prompt or model, or no compatible prompt"}}
CONFLICT = {409: {**_ERROR, "description": "Contradicts what the registry holds"}}


def locations(registry: Registry) -> list[str]:
    """Where this registry keeps its data, as error messages could spell it: never shown to a caller."""
    url = make_url(registry.db.url)
    return [*registry.store.locations(), registry.db.url, url.render_as_string(hide_password=False),
            url.host or "", url.database or "", url.password or ""]


def create_app(registry: Registry, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               keep_bytes: int = DEFAULT_KEEP_BYTES, docs: bool = False) -> FastAPI:
    """The API; ``keep_bytes`` > 0 keeps read answers and checked tokens until the DB changes (0: never). ``docs``
    serves the interactive pages ``/docs`` and ``/redoc``, which load their scripts from a third-party CDN (off by
    default; ``/openapi.json`` is always served)."""
    app = FastAPI(
        title="ctpreg registry", version="1", description="Soft prompts that recover compressed LLMs: resolve, "
        "fetch and publish them with a scoped token (Authorization: Bearer ctp_...).",
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
    )
    bearer = HTTPBearer(auto_error=False, description="A token from `ctpreg tokens create`")
    scrubber = Scrubber(locations(registry))

    def scoped(needed: str) -> Callable[..., TokenRecord]:
        def check(request: Request,
                  _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenRecord:
            return authorize(request.state.token, True, needed)  # authenticated already, by ``Authenticate``

        return check

    # ``Authenticate`` refuses a request without a valid token (401) before its body is read; each router's
    # dependency then checks the scope (403).
    reads, publishes, admins = (APIRouter(tags=[scope], dependencies=[Depends(scoped(scope))])
                                for scope in (READ, PUBLISH, ADMIN))

    @app.exception_handler(errors.CtpregError)
    async def _ctpreg_error(request: Request, exc: errors.CtpregError) -> JSONResponse:
        return scrubber.response(exc, request_id_of(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing and body-parsing errors in the same shape as every other error; a 405 lists every method the
        path has (Starlette's own lists only the first route's)."""
        error = errors.NotFound if exc.status_code == 404 else errors.InvalidInput
        response = scrubber.response(error(str(exc.detail)), request_id_of(request.scope), status=exc.status_code)
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(
                method for method in METHODS
                if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                       for route in app.router.routes))
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        refusal = errors.InvalidInput(f"{where}: {first.get('msg', 'invalid request')}")
        return scrubber.response(refusal, request_id_of(request.scope), status=422)

    @app.get("/health", response_model=api.StatusOut, tags=["service"])
    def health() -> dict[str, Any]:
        """The process answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/ready", response_model=api.StatusOut, tags=["service"], responses={503: {"model": api.StatusOut}})
    def ready(request: Request) -> Any:
        """The metadata DB answers with a current schema and the object store is there (its folder or bucket
        exists); no token needed. The reason of a failed check is in the server's log, under the request's id."""
        checks = {}
        for name, probe in (("db", registry.list_models), ("store", registry.store.check)):
            try:
                probe()
                checks[name] = "ok"
            except errors.CtpregError as exc:
                checks[name] = type(exc).__name__
                scrubber.message(exc, request_id_of(request.scope))  # logs the detail
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    # --- read ----------------------------------------------------------------------------------------------------

    def target_query(
        model: Annotated[str, Query(min_length=1, max_length=256, description="Base model slug, e.g. llama-7b")],
        method: Annotated[api.Method | None, Query()] = None,
        bits: Annotated[int | None, Query()] = None,
        sparsity: Annotated[float | None, Query()] = None,
        group_size: Annotated[int | None, Query()] = None,
        dataset: Annotated[str | None, Query(max_length=256)] = None,
        task: Annotated[str | None, Query(max_length=256)] = None,
        identity: Annotated[str | None, Query(max_length=80)] = None,
        compression: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Target:
        values = dict(model=model, method=method, bits=bits, sparsity=sparsity, group_size=group_size,
                      dataset=dataset, task=task, identity=identity, compression=compression)
        return target_from_wire({k: v for k, v in values.items() if v is not None})

    @reads.get("/v1/resolve", response_model=api.ResolutionOut, responses={**ERRORS, **NOT_FOUND})
    def resolve_target(target: Annotated[Target, Depends(target_query)]) -> Any:
        """The prompt to serve for a compressed target, with every ranked candidate and why (``ctpreg resolve``).
        404 when no prompt shares the model's embedding space."""
        resolution = resolve(registry, target)
        return {"target": target.describe(), "served": candidate_to_wire(resolution.served),
                "candidates": [candidate_to_wire(c) for c in resolution.candidates], "measured": 0}

    @reads.get("/v1/candidates", response_model=list[api.CandidateOut], responses={**ERRORS, **NOT_FOUND})
    def candidates(
        target: Annotated[Target, Depends(target_query)],
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 20,
        eval_key: Annotated[str | None, Query(max_length=300)] = None,
    ) -> Any:
        """The ranked head for a target, evidence on ``eval_key`` windows included (what a validator needs)."""
        return [candidate_to_wire(c) for c in registry.candidates(target, limit=limit, eval_key=eval_key)]

    @reads.get("/v1/prompts", response_model=list[api.PromptOut], responses=ERRORS)
    def list_prompts(
        model: Annotated[str | None, Query(max_length=256)] = None,
        method: Annotated[api.Method | None, Query()] = None,
        bits: Annotated[int | None, Query()] = None,
        dataset: Annotated[str | None, Query(max_length=256)] = None,
        include_deprecated: bool = True,
        limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    ) -> Any:
        """Prompt versions, filtered (``ctpreg list``), by name and version, one page at a time (``offset``)."""
        records = registry.list_prompts(model=model, methods=[method] if method else None, bits=bits,
                                        dataset=dataset, include_deprecated=include_deprecated, limit=limit,
                                        offset=offset)
        return [r.to_dict() for r in records]

    @reads.get("/v1/prompt", response_model=api.PromptOut, responses={**ERRORS, **NOT_FOUND})
    def show(ref: Annotated[str, Query(pattern=REF_PATTERN, max_length=600, description="NAME, NAME:VERSION, "
                                       "NAME@ALIAS or a sha256 prefix")]) -> Any:
        """One prompt version (``ctpreg show``)."""
        return registry.get(ref).to_dict()

    @reads.get("/v1/objects/{sha256}", response_class=Response, responses={
        **ERRORS, **NOT_FOUND, 200: {"content": {"application/octet-stream": {}}, "description": "The artifact"},
        304: {"description": "Not modified (If-None-Match named this sha256)"},
        500: {**_ERROR, "description": "The stored bytes do not match their sha256: never served"},
    })
    def fetch_object(
        sha256: Annotated[str, Path(pattern=SHA256_PATTERN)],
        if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> Response:
        """A prompt's artifact by its sha256, verified before the first byte is sent (``ETag`` = sha256)."""
        record = registry.get(sha256)  # only what a prompt references; NotFound otherwise
        etag = f'"{record.sha256}"'
        if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")} | {"*"}:
            return Response(status_code=304, headers={"ETag": etag})
        data = registry.fetch_record(record)
        return Response(data, media_type="application/octet-stream", headers={
            "ETag": etag, "Content-Disposition": f'attachment; filename="{record.sha256}.safetensors"',
        })

    @reads.get("/v1/states/{sha256}", response_class=Response, responses={
        **ERRORS, **NOT_FOUND, 200: {"content": {"application/octet-stream": {}}, "description": "The state"},
        500: {**_ERROR, "description": "The stored bytes do not match their sha256: never served"},
    })
    def fetch_state(sha256: Annotated[str, Path(pattern=SHA256_PATTERN)]) -> Response:
        """An optimizer state object by its sha256 (what ``ctpreg train --continue`` starts from), verified
        before the first byte is sent."""
        return Response(registry.fetch_state(sha256), media_type="application/octet-stream",
                        headers={"ETag": f'"{sha256}"'})

    @reads.get("/v1/models", response_model=list[api.ModelOut], responses=ERRORS)
    def list_models(
        fingerprint: Annotated[str | None, Query(pattern=FINGERPRINT_PATTERN)] = None,
    ) -> Any:
        """Registered base models, or those of one embedding-space fingerprint."""
        models = (registry.models_with_fingerprint(check_fingerprint(fingerprint)) if fingerprint is not None
                  else registry.list_models())
        return [m.to_dict() for m in models]

    @reads.get("/v1/model", response_model=api.ModelOut, responses={**ERRORS, **NOT_FOUND})
    def show_model(name: Annotated[str, Query(min_length=1, max_length=256)]) -> Any:
        model = registry.get_model(check_text(name, "model"))
        if model is None:
            raise errors.NotFound(f"no model named {name!r}")
        return model.to_dict()

    @reads.get("/v1/evidence", response_model=list[api.EvidenceOut], responses=ERRORS)
    def evidence(model: Annotated[str, Query(min_length=1, max_length=256)]) -> Any:
        """Every measurement recorded on targets of ``model`` (``ctpreg report``), oldest first."""
        return [evidence_to_wire(e) for e in registry.evidence(check_text(model, "model"))]

    # --- publish -------------------------------------------------------------------------------------------------

    @publishes.post("/v1/prompts", response_model=api.PublishOut, status_code=201, responses={
        **ERRORS, **CONFLICT, 200: {"model": api.PublishOut, "description": "Already published: that version"},
    }, openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}})
    async def publish(
        request: Request,
        name: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=512)] = None,
        alias: Annotated[str | None, Query(pattern=ALIAS_PATTERN)] = None,
    ) -> Any:
        """Publish a ctpreg prompt artifact (the raw .safetensors bytes): checked exactly as ``ctpreg publish``
        checks a file, stored by content, recorded as the next version of NAME. Idempotent (200 on a repeat)."""
        data = await request.body()
        acting = registry.acting_as(_actor(request.state.token))
        result = await run_in_threadpool(acting.publish_bytes, data, name=name, alias=alias)
        body = {"prompt": result.prompt.to_dict(), "created": result.created}
        return JSONResponse(body, status_code=201 if result.created else 200)

    @publishes.post("/v1/states", response_model=api.StateOut, status_code=201, responses=ERRORS, openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}})
    async def publish_state(request: Request) -> Any:
        """Store an optimizer state object (the raw .state.safetensors bytes, checked first) by its sha256, before
        the prompt that names it is published. Idempotent."""
        data = await request.body()
        return {"sha256": await run_in_threadpool(registry.publish_state, data)}

    @publishes.post("/v1/evidence", status_code=201, response_model=api.StatusOut, responses={**ERRORS, **NOT_FOUND})
    def add_evidence(body: api.EvidenceIn) -> Any:
        """Record what a validator measured elsewhere (a prompt on a target, on named windows)."""
        target = target_from_wire(body.target.model_dump(exclude_none=True))
        prompt = registry.get(body.prompt)
        measurement = measurement_from_wire(body.measurement.model_dump())
        registry.record_evidence(target, prompt, measurement, accepted=body.accepted)
        return {"status": "recorded"}

    @publishes.post("/v1/models", response_model=api.ModelOut, responses={**ERRORS, **CONFLICT})
    def add_model(body: api.ModelIn) -> Any:
        """Register a base model (publishing registers unknown models by itself)."""
        record = BaseModelRecord(
            name=check_model_name(body.name), fingerprint=check_fingerprint(body.fingerprint),
            hidden_size=body.hidden_size, vocab_size=body.vocab_size, architecture=body.architecture,
            source=body.source,
        )
        return registry.add_model(record).to_dict()

    # --- admin ---------------------------------------------------------------------------------------------------

    @admins.put("/v1/aliases", response_model=api.PromptOut, responses={**ERRORS, **NOT_FOUND})
    def set_alias(body: api.AliasIn) -> Any:
        """Point NAME@ALIAS at the version REF names (``ctpreg alias set``)."""
        return registry.set_alias(body.ref, body.alias).to_dict()

    @admins.post("/v1/deprecate", response_model=api.PromptOut, responses={**ERRORS, **NOT_FOUND})
    def deprecate(body: api.RefIn) -> Any:
        """Hide a version from resolve; it stays fetchable (``ctpreg deprecate``)."""
        return registry.deprecate(body.ref).to_dict()

    @admins.post("/v1/gc", response_model=api.GcOut, responses={**ERRORS, **CONFLICT})
    def gc(body: api.GcIn) -> Any:
        """Remove unreferenced objects older than the grace period (``ctpreg gc``)."""
        removed = registry.gc(grace_seconds=body.grace_seconds, dry_run=body.dry_run,
                              allow_empty_db=body.allow_empty_db)
        return {"dry_run": body.dry_run, "objects": [
            {"key": o.key, "size": o.size, "modified": o.modified.isoformat()} for o in removed]}

    @admins.post("/v1/tokens", response_model=api.TokenCreatedOut, status_code=201, responses=ERRORS)
    def create_token(body: api.TokenIn, request: Request) -> Any:
        """A new token; its value is in this answer only."""
        expires = datetime.fromisoformat(body.expires_at) if body.expires_at is not None else None  # checked
        acting = registry.acting_as(_actor(request.state.token))
        record, value = acting.create_token(scope=body.scope, name=body.name, expires_at=expires)
        return {"record": record.to_dict(), "token": value}

    @admins.get("/v1/tokens", response_model=list[api.TokenOut], responses=ERRORS)
    def list_tokens() -> Any:
        return [t.to_dict() for t in registry.list_tokens()]

    @admins.delete("/v1/tokens/{token_id}", response_model=api.TokenOut, responses={**ERRORS, **NOT_FOUND})
    def revoke_token(token_id: Annotated[str, Path(pattern=PUBLIC_ID_PATTERN)]) -> Any:
        return registry.revoke_token(token_id).to_dict()

    for router in (reads, publishes, admins):
        app.include_router(router)
    marker = change_marker(registry.db.url) if keep_bytes > 0 else None
    app.add_middleware(BodyLimit, limit=max_body_bytes, scrubber=scrubber)
    app.add_middleware(KeptAnswers, limit_bytes=keep_bytes if marker is not None else 0)
    app.add_middleware(Authenticate, registry=registry, scrubber=scrubber, marker=marker)
    app.add_middleware(AccessLog)
    app.add_middleware(RequestIds, scrubber=scrubber)
    return app


def configure_access_log(enabled: bool) -> None:
    """The access log (and the detail of scrubbed errors) as JSON lines on stderr; ``enabled`` False keeps only
    warnings."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if enabled else logging.WARNING)
    log.propagate = False


def _actor(token: TokenRecord) -> str:
    """Who a write over HTTP is recorded as: the token that made it (the caller's claimed user is not trusted)."""
    return f"{token.name[:100]} (token {token.public_id})"
