"""The registry over HTTP: what ``Client`` and the CLI use when ``CTPREG_URL`` names a ``ctpreg serve`` registry.

It answers the same calls as ``service.Registry`` with the same domain objects, so the resolver, the validator, the
client's verified cache and offline mode run unchanged on top of it. The server does the work (ranking, checks,
storage); this side only moves requests and JSON (``registry.wire``) and re-raises the server's error as the same
``CtpregError`` class, so exit codes match direct access.

Every answer is hostile input, the client's own registry included (DESIGN §13):

- reads are bounded: a JSON answer by ``CTPREG_MAX_ANSWER_BYTES`` (8 MiB by default) and 32 levels of nesting, an
  object by the size its record declares, each by a total time as well as a per-read one; compressed answers,
  which this client never asks for, are refused rather than inflated;
- answers are read strictly (``registry.wire``): 64-hex digests, bounded sizes, printable text, and a record must be
  the one asked for (its ref, the bytes just published, the alias just set);
- object bytes are verified against their sha256 here as well: a server or proxy in between cannot hand over a
  tampered prompt as valid;
- the token goes only over https or to a loopback address, unless ``CTPREG_ALLOW_INSECURE_TOKEN=1`` says otherwise
  (warned on every use); a URL's credentials are masked in every message.
Every refusal is a ``MalformedAnswer`` (exit 16), ``IntegrityError`` (7) or ``StoreError`` (8): one line, no trace.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import urllib3

from . import strict_json
from .digest import sha256_hex
from .errors import CtpregError, IntegrityError, InvalidInput, MalformedAnswer, NotFound, StoreError, error_class
from .matcher import Candidate, Target
from .lineage import MAX_STATE_BYTES, read_state_beside
from .record_checks import Fields, check_sha256
from .records import BaseModelRecord, Evidence, Measurement, PromptRecord
from .refs import parse_ref
from .service import DEFAULT_CANDIDATES, DEFAULT_GC_GRACE_SECONDS, PublishResult, Registry
from .settings import DEFAULT_MAX_ANSWER_BYTES, masked_url
from .stores import ObjectInfo
from .tokens import TokenRecord, check_public_id
from .wire import (
    candidate_from_wire, evidence_from_wire, measurement_to_wire, model_from_wire, target_to_wire, token_from_wire,
)

if TYPE_CHECKING:
    from .artifacts import PromptArtifact
    from .settings import Settings

log = logging.getLogger(__name__)
API = "/v1"
PAGE = 1000  # prompt versions per listing request: the server's largest page
DEFAULT_TIMEOUT_S = 30.0  # per connect and per read
DEFAULT_TOTAL_TIMEOUT_S = 300.0  # per answer, however slowly its bytes trickle in
MAX_DEPTH = 32  # a candidate's metrics sit a few levels down; their own depth is bounded at 16 on publish
MAX_ERROR_BYTES = 64 << 10
MAX_MESSAGE_CHARS = 500
CHUNK_BYTES = 1 << 16
INSECURE_ENV = "CTPREG_ALLOW_INSECURE_TOKEN"
RETRIES = urllib3.Retry(total=3, connect=3, read=0, status=0, backoff_factor=0.2, allowed_methods=None)


class RemoteRegistry:
    """``Registry``'s calls, answered by a ``ctpreg serve`` registry at ``url`` with ``token``."""

    def __init__(self, url: str, token: str | None, *, user: str = "unknown", timeout: float = DEFAULT_TIMEOUT_S,
                 total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S, max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
                 allow_insecure_token: bool = False, pool: urllib3.PoolManager | None = None) -> None:
        self.url = masked_url(url.rstrip("/"))  # what messages show
        self._base = _without_credentials(url.rstrip("/"))
        self.user = user
        self._token = token
        self._total_timeout = total_timeout
        self._max_answer_bytes = max_answer_bytes
        if token:
            _check_token_transport(self._base, allow_insecure_token)
        self._pool = pool or urllib3.PoolManager(
            num_pools=4, maxsize=8, retries=RETRIES, timeout=urllib3.Timeout(connect=5.0, read=timeout),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteRegistry:
        assert settings.url is not None
        return cls(settings.url, settings.token, user=settings.user, max_answer_bytes=settings.max_answer_bytes,
                   allow_insecure_token=settings.allow_insecure_token)

    # --- transport -----------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: bytes | None = None,
                 content_type: str = "application/json") -> urllib3.BaseHTTPResponse:
        """The answer's head; its body is left unread for ``_chunks``. An error answer is raised as its error."""
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "ctpreg-client"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["Content-Type"] = content_type
        fields = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        url = f"{self._base}{API}{path}"
        if fields:
            url += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in fields.items())
        try:
            response = self._pool.request(method, url, body=body, headers=headers, redirect=False,
                                          preload_content=False, decode_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"cannot reach the registry at {self.url}: {_reason(exc)}") from None
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.close()
            raise MalformedAnswer(f"the registry at {self.url} answered {path} with a compressed body "
                                  f"({encoding[:20]!r}), "
                                  "which this client never asks for")
        if response.status >= 400:
            raise self._error_from(response, path)
        return response

    def _chunks(self, response: urllib3.BaseHTTPResponse, limit: int, what: str,
                too_large: type[CtpregError] = MalformedAnswer) -> Iterator[bytes]:
        """The body in chunks, cut off with ``too_large`` past ``limit`` bytes and with ``StoreError`` past the
        total time allowed; the connection is closed, not reused, when the body is refused."""
        declared = response.headers.get("Content-Length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            response.close()
            raise too_large(f"the registry at {self.url} announced {what} of more than {limit} bytes")
        deadline = time.monotonic() + self._total_timeout
        seen = 0
        try:
            while chunk := response.read1(CHUNK_BYTES):
                seen += len(chunk)
                if seen > limit:
                    raise too_large(f"the registry at {self.url} sent {what} of more than {limit} bytes")
                if time.monotonic() > deadline:
                    raise StoreError(f"the registry at {self.url} took over {self._total_timeout:.0f} s to send "
                                     f"{what}")
                yield chunk
        except urllib3.exceptions.HTTPError as exc:
            response.close()
            raise StoreError(f"the registry at {self.url} broke off {what}: {type(exc).__name__}") from None
        except BaseException:
            response.close()
            raise
        response.release_conn()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        what = f"its answer to {path}"
        data = b"".join(self._chunks(response, self._max_answer_bytes, what))
        try:
            return strict_json.loads(data, what, max_bytes=self._max_answer_bytes, max_depth=MAX_DEPTH)
        except InvalidInput as exc:
            raise MalformedAnswer(f"the registry at {self.url}: {exc}") from None

    def _read(self, path: str, reader: Any, method: str = "GET", **kwargs: Any) -> Any:
        """``reader`` applied to the JSON answer; a field it refuses makes the whole answer refused."""
        answer = self._json(method, path, **kwargs)
        try:
            return reader(answer)
        except InvalidInput as exc:
            raise MalformedAnswer(f"the registry at {self.url} answered {path} with a malformed body: {exc}") from None

    def _send(self, method: str, path: str, payload: dict[str, Any], reader: Any) -> Any:
        return self._read(path, reader, method, body=strict_json.dumps(payload, path, max_bytes=1 << 20).encode())

    def _refuse(self, path: str, why: str) -> MalformedAnswer:
        return MalformedAnswer(f"the registry at {self.url} answered {path} {why}")

    def _error_from(self, response: urllib3.BaseHTTPResponse, path: str) -> CtpregError:
        """The server's error as the class it named (same exit code as direct access), else one by HTTP status. Its
        message is shown only as printable text of bounded length."""
        try:
            body = b"".join(self._chunks(response, MAX_ERROR_BYTES, "an error"))
            detail = Fields(strict_json.loads(body, "error", max_bytes=MAX_ERROR_BYTES), "answer").nested("error")
            kind, message = detail.text("type", max_chars=64), detail.data.get("message")
            if isinstance(message, str):
                printable = "".join(c if c.isprintable() else "?" for c in message[:MAX_MESSAGE_CHARS])
                return error_class(kind)(printable)
        except CtpregError:
            pass
        if response.status == 404:
            return NotFound(f"{self.url} answered 404 to {path}: is it a `ctpreg serve` registry?")
        return StoreError(f"the registry at {self.url} answered HTTP {response.status} to {path}")

    # --- prompts -------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> PromptRecord:
        parsed = parse_ref(ref)
        record = self._read("/prompt", PromptRecord.from_dict, params={"ref": ref})
        if not record.answers(parsed):
            raise self._refuse("/prompt", f"for {ref} with {record.ref}, which is not what {ref} names")
        return record

    def list_prompts(
        self, *, model: str | None = None, methods: list[str] | None = None, bits: int | None = None,
        dataset: str | None = None, include_deprecated: bool = True, limit: int | None = None,
    ) -> list[PromptRecord]:
        if methods is not None and len(methods) > 1:
            raise InvalidInput("the HTTP API filters by one method at a time")
        params = {"model": model, "method": methods[0] if methods else None, "bits": bits, "dataset": dataset,
                  "include_deprecated": include_deprecated}
        records: list[PromptRecord] = []
        while limit is None or len(records) < limit:  # the server answers a page at a time
            page_size = PAGE if limit is None else min(PAGE, limit - len(records))
            page = self._read("/prompts", _records, params={**params, "limit": page_size, "offset": len(records)})
            if len(page) > page_size:
                raise self._refuse("/prompts", f"with {len(page)} records for a page of {page_size}")
            records += page
            if len(page) < page_size:
                break
        return records

    def fetch(self, ref: str) -> tuple[PromptRecord, bytes]:
        record = self.get(ref)
        return record, self.fetch_record(record)

    def stream_record(self, record: PromptRecord) -> Iterator[bytes]:
        """The object's bytes as they arrive, never more than the record's ``size_bytes`` (the caller hashes)."""
        response = self._request("GET", f"/objects/{record.sha256}")  # a checked 64-hex digest, nothing else
        yield from self._chunks(response, record.size_bytes, f"the object of {record.ref}", IntegrityError)

    def fetch_record(self, record: PromptRecord) -> bytes:
        data = b"".join(self.stream_record(record))
        if len(data) != record.size_bytes or sha256_hex(data) != record.sha256:
            raise IntegrityError(f"the bytes the registry sent for {record.ref} do not match sha256 {record.sha256}")
        return data

    def publish_state(self, data: bytes) -> str:
        sha = sha256_hex(data)
        answered = self._read("/states", lambda answer: Fields(answer, "answer").checked("sha256", check_sha256),
                              "POST", body=data, content_type="application/octet-stream")
        if answered != sha:
            raise self._refuse("/states", f"with sha256 {answered}, not that of the state just sent")
        return sha

    def fetch_state(self, sha256: str) -> bytes:
        path = f"/states/{check_sha256(sha256)}"
        response = self._request("GET", path)
        data = b"".join(self._chunks(response, MAX_STATE_BYTES, "an optimizer state", IntegrityError))
        if sha256_hex(data) != sha256:
            raise IntegrityError(f"the bytes the registry sent for optimizer state {sha256[:12]}… do not match it")
        return data

    def publish(self, path: str | Path, *, name: str | None = None, alias: str | None = None) -> PublishResult:
        from .artifacts import read_artifact  # checked here first: a bad file is refused before it is uploaded

        artifact, data = read_artifact(path)
        state = read_state_beside(Path(path), artifact.metadata.lineage)
        if state is not None:  # the object the prompt names goes first
            self.publish_state(state)
        return self.publish_bytes(data, artifact=artifact, name=name, alias=alias)

    def publish_bytes(self, data: bytes, *, artifact: PromptArtifact | None = None, name: str | None = None,
                      alias: str | None = None) -> PublishResult:
        del artifact  # the server parses and checks the bytes itself, exactly as a direct publish does
        result = self._read("/prompts", _publish_result, "POST", params={"name": name, "alias": alias}, body=data,
                            content_type="application/octet-stream")
        prompt = result.prompt
        if prompt.sha256 != sha256_hex(data) or (name is not None and prompt.name != name) or (
                alias is not None and alias not in prompt.aliases):
            raise self._refuse("/prompts", f"with {prompt.ref}, which is not the prompt just published")
        return result

    def set_alias(self, ref: str, alias: str) -> PromptRecord:
        parsed = parse_ref(ref)
        record = self._send("PUT", "/aliases", {"ref": ref, "alias": alias}, PromptRecord.from_dict)
        if not record.answers(parsed) or alias not in record.aliases:
            raise self._refuse("/aliases", f"with {record.ref}, not {ref} under @{alias}")
        return record

    def deprecate(self, ref: str) -> PromptRecord:
        parsed = parse_ref(ref)
        record = self._send("POST", "/deprecate", {"ref": ref}, PromptRecord.from_dict)
        if not record.answers(parsed) or not record.deprecated:
            raise self._refuse("/deprecate", f"with {record.ref}, not {ref} deprecated")
        return record

    def gc(self, *, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False,
           allow_empty_db: bool = False) -> list[ObjectInfo]:
        payload = {"grace_seconds": grace_seconds, "dry_run": dry_run, "allow_empty_db": allow_empty_db}
        return self._send("POST", "/gc", payload, _removed_objects)

    def reindex(self) -> list[PublishResult]:
        raise InvalidInput("reindex reads the object store itself: run it with CTPREG_DB_URL and CTPREG_STORE_URL "
                           "pointing at the registry's database and store, not through CTPREG_URL")

    # --- base models ---------------------------------------------------------------------------------------------

    def add_model(self, model: BaseModelRecord) -> BaseModelRecord:
        added = self._send("POST", "/models", model.to_dict(), model_from_wire)
        if (added.name, added.fingerprint) != (model.name, model.fingerprint):
            raise self._refuse("/models", f"with model {added.name}, not {model.name}")
        return added

    def get_model(self, name: str) -> BaseModelRecord | None:
        try:
            found = self._read("/model", model_from_wire, params={"name": name})
        except NotFound:
            return None
        if found.name != name:
            raise self._refuse("/model", f"for {name} with model {found.name}")
        return found

    def list_models(self) -> list[BaseModelRecord]:
        return self._read("/models", _each(model_from_wire))

    def models_with_fingerprint(self, fingerprint: str) -> list[BaseModelRecord]:
        models = self._read("/models", _each(model_from_wire), params={"fingerprint": fingerprint})
        if any(m.fingerprint != fingerprint for m in models):
            raise self._refuse("/models", f"for fingerprint {fingerprint} with models of another")
        return models

    base_model_for = Registry.base_model_for  # the same choice among models of a class, over this transport

    # --- matching and evidence -----------------------------------------------------------------------------------

    def candidates(self, target: Target, *, limit: int = DEFAULT_CANDIDATES,
                   eval_key: str | None = None) -> list[Candidate]:
        params = {**target_to_wire(target), "limit": limit, "eval_key": eval_key}
        found = self._read("/candidates", _each(candidate_from_wire), params=params)
        if len(found) > limit:
            raise self._refuse("/candidates", f"with {len(found)} candidates, over the {limit} asked for")
        return found

    def evidence(self, model: str) -> list[Evidence]:
        return self._read("/evidence", _each(evidence_from_wire), params={"model": model})

    def record_evidence(self, target: Target, prompt: PromptRecord, measurement: Measurement, *,
                        accepted: bool) -> None:
        self._send("POST", "/evidence", {
            "target": target_to_wire(target), "prompt": prompt.ref, "measurement": measurement_to_wire(measurement),
            "accepted": accepted,
        }, lambda answer: None)

    # --- API tokens ----------------------------------------------------------------------------------------------

    def create_token(self, *, scope: str, name: str, expires_at: datetime | None = None) -> tuple[TokenRecord, str]:
        payload = {"scope": scope, "name": name,
                   "expires_at": expires_at.astimezone(UTC).isoformat() if expires_at else None}
        record, value = self._send("POST", "/tokens", payload, _created_token)
        if (record.scope, record.name) != (scope, name):
            raise self._refuse("/tokens", f"with a {record.scope} token named {record.name}, not what was asked")
        return record, value

    def list_tokens(self) -> list[TokenRecord]:
        return self._read("/tokens", _each(token_from_wire))

    def revoke_token(self, public_id: str) -> TokenRecord:
        path = f"/tokens/{check_public_id(public_id)}"
        record = self._read(path, token_from_wire, "DELETE")
        if record.public_id != public_id:
            raise self._refuse(path, f"with token {record.public_id}")
        return record


def _each(reader: Any) -> Any:
    """A reader of a JSON list whose items ``reader`` reads."""
    def read(answer: object) -> list[Any]:
        if not isinstance(answer, list):
            raise InvalidInput("the answer is not a JSON list")
        return [reader(item) for item in answer]

    return read


def _records(answer: object) -> list[PromptRecord]:
    return _each(PromptRecord.from_dict)(answer)


def _publish_result(answer: object) -> PublishResult:
    fields = Fields(answer, "answer")
    return PublishResult(prompt=PromptRecord.from_dict(fields.data.get("prompt")),
                         created=bool(fields.boolean("created")))


def _removed_objects(answer: object) -> list[ObjectInfo]:
    fields = Fields(answer, "answer")
    removed = []
    for item in fields.items("objects"):
        entry = Fields(item, "object")
        removed.append(ObjectInfo(key=entry.text("key", max_chars=1024), size=entry.integer("size", 0, 2**53),
                                  modified=entry.moment("modified")))
    return removed


def _created_token(answer: object) -> tuple[TokenRecord, str]:
    fields = Fields(answer, "answer")
    return token_from_wire(fields.data.get("record")), fields.text("token", max_chars=256)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """Why a connection failed, in words ("Connection refused"), without urllib3's pool and URL details."""
    reason = getattr(exc, "reason", None) or exc
    return str(reason).rpartition("): ")[2].strip()[:200] or type(reason).__name__


def _without_credentials(url: str) -> str:
    """The URL requests go to: credentials in it are never sent (the token is the only credential)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _check_token_transport(url: str, allowed: bool) -> None:
    """A bearer token crosses the network only inside TLS, or stays on this machine (a loopback address)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or _is_loopback(parts.hostname or ""):
        return
    if not allowed:
        raise InvalidInput(
            f"refusing to send CTPREG_TOKEN in clear text to {parts.hostname}: use an https:// CTPREG_URL or a "
            f"loopback address, or set {INSECURE_ENV}=1 to accept the risk"
        )
    log.warning("%s=1: sending CTPREG_TOKEN in clear text to %s over plain http", INSECURE_ENV, parts.hostname)


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
