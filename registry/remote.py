"""The registry over HTTP: what ``Client`` and the CLI use when ``CTPREG_URL`` names a ``ctpreg serve`` registry.

It answers the same calls as ``service.Registry`` with the same domain objects, so the resolver, the validator, the
client's verified cache and offline mode run unchanged on top of it. The server does the work (ranking, checks,
storage); this side only moves requests and JSON (``registry.wire``) and re-raises the server's error as the same
``CtpregError`` class, so exit codes match direct access. Object bytes are verified against their sha256 here as
well: a server or proxy in between cannot hand over a tampered prompt as valid.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import urllib3

from .digest import sha256_hex
from .errors import CtpregError, IntegrityError, InvalidInput, NotFound, StoreError, error_class
from .matcher import Candidate, Target
from .records import BaseModelRecord, Evidence, Measurement, PromptRecord
from .service import DEFAULT_CANDIDATES, DEFAULT_GC_GRACE_SECONDS, PublishResult, Registry
from .stores import ObjectInfo
from .tokens import TokenRecord
from .wire import (
    candidate_from_wire, evidence_from_wire, measurement_to_wire, model_from_wire, target_to_wire, token_from_wire,
)

if TYPE_CHECKING:
    from .artifacts import PromptArtifact
    from .settings import Settings

API = "/v1"
PAGE = 1000  # prompt versions per listing request: the server's largest page
DEFAULT_TIMEOUT_S = 30.0
RETRIES = urllib3.Retry(total=3, connect=3, read=0, status=0, backoff_factor=0.2, allowed_methods=None)


class RemoteRegistry:
    """``Registry``'s calls, answered by a ``ctpreg serve`` registry at ``url`` with ``token``."""

    def __init__(self, url: str, token: str | None, *, user: str = "unknown", timeout: float = DEFAULT_TIMEOUT_S,
                 pool: urllib3.PoolManager | None = None) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._token = token
        self._pool = pool or urllib3.PoolManager(
            num_pools=4, maxsize=8, retries=RETRIES, timeout=urllib3.Timeout(connect=5.0, read=timeout),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteRegistry:
        assert settings.url is not None
        return cls(settings.url, settings.token, user=settings.user)

    # --- transport -----------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: bytes | None = None,
                 content_type: str = "application/json") -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json", "User-Agent": "ctpreg-client"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["Content-Type"] = content_type
        fields = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        url = f"{self.url}{API}{path}"
        if fields:
            url += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in fields.items())
        try:
            response = self._pool.request(method, url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"cannot reach the registry at {self.url}: {exc}") from None
        if response.status >= 400:
            raise _error_from(response, self.url)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return json.loads(response.data)
        except ValueError:
            raise StoreError(f"the registry at {self.url} answered {path} with something that is not JSON") from None

    def _send(self, method: str, path: str, payload: dict[str, Any]) -> Any:
        return self._json(method, path, body=json.dumps(payload).encode())

    # --- prompts -------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> PromptRecord:
        return PromptRecord.from_dict(self._json("GET", "/prompt", params={"ref": ref}))

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
            page = self._json("GET", "/prompts", params={**params, "limit": page_size, "offset": len(records)})
            records += [PromptRecord.from_dict(item) for item in page]
            if len(page) < page_size:
                break
        return records

    def fetch(self, ref: str) -> tuple[PromptRecord, bytes]:
        record = self.get(ref)
        return record, self.fetch_record(record)

    def fetch_record(self, record: PromptRecord) -> bytes:
        data = self._request("GET", f"/objects/{record.sha256}").data
        if sha256_hex(data) != record.sha256:
            raise IntegrityError(f"the bytes the registry sent for {record.ref} do not match sha256 {record.sha256}")
        return data

    def publish(self, path: str | Path, *, name: str | None = None, alias: str | None = None) -> PublishResult:
        from .artifacts import read_artifact  # checked here first: a bad file is refused before it is uploaded

        artifact, data = read_artifact(path)
        return self.publish_bytes(data, artifact=artifact, name=name, alias=alias)

    def publish_bytes(self, data: bytes, *, artifact: PromptArtifact | None = None, name: str | None = None,
                      alias: str | None = None) -> PublishResult:
        del artifact  # the server parses and checks the bytes itself, exactly as a direct publish does
        answer = self._json("POST", "/prompts", params={"name": name, "alias": alias}, body=data,
                            content_type="application/octet-stream")
        return PublishResult(prompt=PromptRecord.from_dict(answer["prompt"]), created=bool(answer["created"]))

    def set_alias(self, ref: str, alias: str) -> PromptRecord:
        return PromptRecord.from_dict(self._send("PUT", "/aliases", {"ref": ref, "alias": alias}))

    def deprecate(self, ref: str) -> PromptRecord:
        return PromptRecord.from_dict(self._send("POST", "/deprecate", {"ref": ref}))

    def gc(self, *, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False,
           allow_empty_db: bool = False) -> list[ObjectInfo]:
        answer = self._send("POST", "/gc", {"grace_seconds": grace_seconds, "dry_run": dry_run,
                                           "allow_empty_db": allow_empty_db})
        return [ObjectInfo(key=o["key"], size=int(o["size"]), modified=datetime.fromisoformat(o["modified"]))
                for o in answer["objects"]]

    def reindex(self) -> list[PublishResult]:
        raise InvalidInput("reindex reads the object store itself: run it with CTPREG_DB_URL and CTPREG_STORE_URL "
                           "pointing at the registry's database and store, not through CTPREG_URL")

    # --- base models ---------------------------------------------------------------------------------------------

    def add_model(self, model: BaseModelRecord) -> BaseModelRecord:
        return model_from_wire(self._send("POST", "/models", model.to_dict()))

    def get_model(self, name: str) -> BaseModelRecord | None:
        try:
            return model_from_wire(self._json("GET", "/model", params={"name": name}))
        except NotFound:
            return None

    def list_models(self) -> list[BaseModelRecord]:
        return [model_from_wire(item) for item in self._json("GET", "/models")]

    def models_with_fingerprint(self, fingerprint: str) -> list[BaseModelRecord]:
        return [model_from_wire(item) for item in self._json("GET", "/models", params={"fingerprint": fingerprint})]

    base_model_for = Registry.base_model_for  # the same choice among models of a class, over this transport

    # --- matching and evidence -----------------------------------------------------------------------------------

    def candidates(self, target: Target, *, limit: int = DEFAULT_CANDIDATES,
                   eval_key: str | None = None) -> list[Candidate]:
        params = {**target_to_wire(target), "limit": limit, "eval_key": eval_key}
        return [candidate_from_wire(item) for item in self._json("GET", "/candidates", params=params)]

    def evidence(self, model: str) -> list[Evidence]:
        return [evidence_from_wire(item) for item in self._json("GET", "/evidence", params={"model": model})]

    def record_evidence(self, target: Target, prompt: PromptRecord, measurement: Measurement, *,
                        accepted: bool) -> None:
        self._send("POST", "/evidence", {
            "target": target_to_wire(target), "prompt": prompt.ref, "measurement": measurement_to_wire(measurement),
            "accepted": accepted,
        })

    # --- API tokens ----------------------------------------------------------------------------------------------

    def create_token(self, *, scope: str, name: str, expires_at: datetime | None = None) -> tuple[TokenRecord, str]:
        answer = self._send("POST", "/tokens", {
            "scope": scope, "name": name, "expires_at": expires_at.astimezone(UTC).isoformat() if expires_at else None,
        })
        return token_from_wire(answer["record"]), answer["token"]

    def list_tokens(self) -> list[TokenRecord]:
        return [token_from_wire(item) for item in self._json("GET", "/tokens")]

    def revoke_token(self, public_id: str) -> TokenRecord:
        return token_from_wire(self._json("DELETE", f"/tokens/{quote(public_id, safe='')}"))


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error_from(response: urllib3.BaseHTTPResponse, url: str) -> CtpregError:
    """The server's error as the class it named (same exit code as direct access), else one by HTTP status."""
    try:
        detail = json.loads(response.data)["error"]
        return error_class(str(detail["type"]))(str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        pass
    if response.status == 404:
        return NotFound(f"{url} answered 404: is it a `ctpreg serve` registry?")
    return StoreError(f"the registry at {url} answered HTTP {response.status}")

