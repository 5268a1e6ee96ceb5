"""The registry: metadata DB + object store behind one object, used by the CLI and the client.

Publish (DESIGN §6) is check → upload → one DB transaction. A crash between upload and commit leaves only an
unreferenced object, which ``gc`` removes once it is older than the grace period; no row ever points to a missing
object because rows are written after their objects.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .db.lite import SqliteReader, sqlite_path
from .db.postgres_pool import PostgresPool, conninfo_for
from .db.postgres_reads import PostgresReader
from .lazy import lazy_module
from .digest import sha256_hex
from .errors import Conflict, InvalidArtifact, InvalidInput, NoCompatiblePrompt, StoreError
from .compression import FULL_PRECISION_BITS
from .identity import LEGACY
from .lineage import STATE_PREFIX, read_state_beside, state_key
from .matcher import Candidate, Target, rank
from .records import BaseModelRecord, Evidence, Measurement, PromptRecord
from .recovery import gap_recovered, is_perplexity
from .refs import LATEST, check_alias, check_name, check_text, parse_ref
from .settings import Settings
from .stores import ObjectInfo, ObjectStore, open_store, sha_of_key
from .tokens import NewToken, TokenRecord, authorize, check_public_id, check_scope, check_token_name, new_token
from .tokens import secret_matches, split_token

if TYPE_CHECKING:
    from .artifacts import PromptArtifact, PromptMetadata
    from .db import crud
    from .db.crud import Reads
    from .db.engine import Database
    from .remote import RemoteRegistry
else:
    crud = lazy_module("ctpreg.registry.db.crud")  # SQLAlchemy loads when the full path first needs it

log = logging.getLogger(__name__)
DEFAULT_GC_GRACE_SECONDS = 3600
MAX_GC_GRACE_SECONDS = 10 * 365 * 86400
DEFAULT_CANDIDATES = 20
MAX_SIZE = 2**31 - 1  # hidden and vocab sizes: what every integer column holds


def open_registry(settings: Settings) -> Registry | RemoteRegistry:
    """The registry the settings name: a ``ctpreg serve`` server when ``CTPREG_URL`` is set, else the DB and store."""
    if settings.url is not None:
        from .remote import RemoteRegistry  # urllib3 loads only for a registry over HTTP

        return RemoteRegistry.from_settings(settings)
    return Registry.from_settings(settings)


def default_prompt_name(metadata: PromptMetadata) -> str:
    return f"{metadata.model}/{metadata.compression.canonical}/{metadata.dataset}"


@dataclass(frozen=True)
class PublishResult:
    prompt: PromptRecord
    created: bool


class Registry:
    """Prompts, base models and evidence, stored in ``db`` (metadata) and ``store`` (bytes).

    Built from settings, the DB and the store open on first use, and a read-only resolve on a current SQLite file
    reads through ``db.lite`` without loading SQLAlchemy at all (what a cold ``ctpreg resolve`` waits for).
    """

    def __init__(self, db: Database | None, store: ObjectStore | None, *, user: str = "unknown",
                 settings: Settings | None = None) -> None:
        if (db is None or store is None) and settings is None:
            raise ValueError("a Registry needs a database and a store, or the settings to open them")
        self._db, self._store, self._settings = db, store, settings
        self.user = user
        self._known_models: dict[str, BaseModelRecord] = {}  # base-model rows never change once written
        self._postgres: PostgresPool | Literal[False] | None = None  # None: not opened yet; False: not PostgreSQL

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(None, None, user=settings.user, settings=settings)

    def acting_as(self, user: str) -> Registry:
        """This registry (same DB, store and caches) recording its writes as ``user``: a server's caller."""
        self._postgres_pool()  # opened before copying, so every acting registry shares one pool of connections
        acting = copy.copy(self)
        acting.user = user
        return acting

    @property
    def db(self) -> Database:
        if self._db is None:
            from .db.engine import Database

            assert self._settings is not None
            embedded = self._settings.db_url == f"sqlite:///{self._settings.home / 'registry.db'}"
            self._db = Database(self._settings.db_url, auto_upgrade_empty=embedded)
        return self._db

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            assert self._settings is not None
            self._store = open_store(self._settings.store_url, s3_endpoint_url=self._settings.s3_endpoint_url)
        return self._store

    @contextmanager
    def _reads(self) -> Iterator[Reads]:
        """Resolve's read queries in one transaction: sqlite3 directly while nothing needed SQLAlchemy yet, else a
        session of the full path (which also upgrades or refuses a schema that is not current)."""
        path = sqlite_path(self._settings.db_url) if self._db is None and self._settings is not None else None
        reader = SqliteReader.open(path) if path is not None else None
        if reader is not None:
            try:
                yield reader
            finally:
                reader.close()
            return
        postgres = self._postgres_pool()
        if postgres is not None:
            with postgres.connection() as connection:
                if connection is not None:
                    yield PostgresReader(connection)
                    return
        with self.db.session() as session:
            yield crud.SessionReads(session)

    def _postgres_pool(self) -> PostgresPool | None:
        """The psycopg connections of a ``postgresql+psycopg://`` DB (``db.postgres_pool``), opened once."""
        if self._postgres is None:
            url = self._db.url if self._db is not None else self._settings.db_url if self._settings else ""
            conninfo = conninfo_for(url)
            self._postgres = PostgresPool(conninfo) if conninfo is not None else False
        return self._postgres if self._postgres and self._postgres.usable else None

    # --- publish -------------------------------------------------------------------------------------------------

    def publish(self, path: str | Path, *, name: str | None = None, alias: str | None = None) -> PublishResult:
        from .artifacts import read_artifact  # numpy and safetensors load only when an artifact is read

        artifact, data = read_artifact(path)
        state = read_state_beside(Path(path), artifact.metadata.lineage)
        if state is not None:  # the object the prompt names goes first
            self.publish_state(state)
        return self.publish_bytes(data, artifact=artifact, name=name, alias=alias)

    def _restore_after_commit(self, key: str, data: bytes, record: PromptRecord) -> None:
        """Where no publish gate exists (``crud.publish_gate_held``: SQLite), put the object back if a concurrent gc
        took it between our upload or touch and our commit. The publish is committed by now, so a store failure here
        is reported as a warning, never as a failed publish."""
        try:
            if not self.store.exists(key):
                self.store.put(key, data)
        except StoreError as exc:
            log.warning("published %s, but could not confirm its object afterwards (%s); `ctpreg fetch %s` checks it",
                        record.ref, exc, record.ref)

    def publish_bytes(
        self, data: bytes, *, artifact: PromptArtifact | None = None, name: str | None = None, alias: str | None = None
    ) -> PublishResult:
        if artifact is None:
            from .artifacts import parse_artifact

            artifact = parse_artifact(data)
        meta = artifact.metadata
        name = check_name(name or default_prompt_name(meta))
        state = meta.lineage.state_sha256
        if state is not None and not self.store.exists(state_key(state)):
            raise InvalidArtifact(f"the artifact names optimizer state {state[:12]}…, which this registry does not "
                                  "hold: publish the state first (`ctpreg publish` does, from the file beside it)")
        if alias is not None and check_alias(alias) == LATEST:
            raise InvalidInput("'latest' moves by itself on publish; choose another alias")
        self._check_against_registered_model(meta)
        spec = meta.compression
        values = dict(
            name=name, compression=spec.canonical, method=spec.method, bits=spec.bits, sparsity=spec.sparsity,
            group_size=spec.group_size, dataset=meta.dataset, task=meta.task,
            num_virtual_tokens=meta.num_virtual_tokens, hidden_size=meta.hidden_size, dtype=artifact.dtype,
            size_bytes=len(data), metrics=meta.metrics,
            recovery=gap_recovered(meta.metrics),
            training=meta.training,
            created_at=datetime.now(UTC), created_by=self.user, deprecated=False,
        )
        targets = [
            dict(compression=target.canonical, method=target.method, bits=target.bits, sparsity=target.sparsity,
                 group_size=target.group_size, recovery=gap_recovered(meta.target_metrics(target)))
            for target in meta.trained_on
        ]
        published = self._publish_on_postgres(data, values=values, targets=targets, model=meta.model, alias=alias)
        if published is not None:
            return published
        with self.db.session(write=True) as session:
            gated = crud.publish_gate_held(session)  # from before the upload until the commit
            sha, key = self.store.put_content(data)
            values.update(sha256=sha, object_key=key)
            model = self._known_models.get(meta.model)
            if model is None or model.id is None:
                crud.ensure_base_model(
                    session, name=meta.model, fingerprint=meta.model_fingerprint, hidden_size=meta.hidden_size
                )
                model = crud.get_base_model(session, name=meta.model)
                assert model is not None and model.id is not None
            values["base_model_id"] = model.id
            record, created = crud.insert_next_version(session, values=values, model=model, targets=targets)
            if alias:
                crud.set_alias(session, name=name, alias=alias, prompt_id=record.id)
            if created:
                aliases = tuple(sorted({LATEST, *([alias] if alias else [])}))
            else:
                aliases = crud.aliases_of(session, prompt_id=record.id)
            record = replace(record, aliases=aliases)
        self._known_models[meta.model] = model
        if not gated:
            self._restore_after_commit(key, data, record)
        log.info("published %s (sha256 %s, %s)", record.ref, sha[:12], "new" if created else "existing")
        return PublishResult(prompt=record, created=created)

    def _publish_on_postgres(self, data: bytes, *, values: dict[str, Any], targets: list[dict[str, Any]],
                             model: str, alias: str | None) -> PublishResult | None:
        """A publish through psycopg (``db.postgres_writes``) once the base model is registered, or None: the full
        path then registers the model, or serves a DB that is not PostgreSQL through psycopg."""
        from .db.postgres_writes import publish_rows

        known = self._known_models.get(model)
        postgres = self._postgres_pool() if known is not None and known.id is not None else None
        if postgres is None:
            return None
        with postgres.connection() as connection:
            if connection is None:
                return None
            published = publish_rows(connection, values=values, targets=targets, model=known, alias=alias,
                                     upload=lambda: self.store.put_content(data))
        if published is None:
            return None
        record, created = published
        log.info("published %s (sha256 %s, %s)", record.ref, record.sha256[:12], "new" if created else "existing")
        return PublishResult(prompt=record, created=created)

    def _check_against_registered_model(self, meta: PromptMetadata) -> None:
        """Fail before uploading anything when the artifact contradicts its registered base model."""
        known = self._known_models.get(meta.model) or self.get_model(meta.model)
        if known is None:
            return
        self._known_models[meta.model] = known
        if known.fingerprint != meta.model_fingerprint:
            raise Conflict(
                f"model {meta.model!r} is registered with fingerprint {known.fingerprint[:19]}…, the artifact says "
                f"{meta.model_fingerprint[:19]}…: a prompt only fits the embedding space it was trained in"
            )
        if known.hidden_size != meta.hidden_size:
            raise Conflict(
                f"model {meta.model!r} has hidden size {known.hidden_size}, the artifact says {meta.hidden_size}"
            )

    # --- read ----------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> PromptRecord:
        with self.db.session() as session:
            return crud.get_prompt(session, ref=parse_ref(ref))

    def list_prompts(
        self, *, model: str | None = None, methods: list[str] | None = None, bits: int | None = None,
        dataset: str | None = None, include_deprecated: bool = True, limit: int | None = None, offset: int = 0,
    ) -> list[PromptRecord]:
        if bits is not None and not 1 <= bits <= FULL_PRECISION_BITS:
            raise InvalidInput(f"bits must be an integer in 1..{FULL_PRECISION_BITS}, got {bits}")
        for key, value in (("model", model), ("dataset", dataset)):
            if value not in (None, ""):
                check_text(value, key)
        if limit is not None and not 0 < limit <= 1_000_000:
            raise InvalidInput(f"limit must be an integer in 1..1000000, got {limit}")
        with self.db.session() as session:
            return crud.list_prompts(
                session, model=model, methods=methods, bits=bits, dataset=dataset,
                include_deprecated=include_deprecated, limit=limit, offset=offset,
            )

    def fetch(self, ref: str) -> tuple[PromptRecord, bytes]:
        """The prompt and its bytes, verified against the recorded sha256."""
        record = self.get(ref)
        return record, self.fetch_record(record)

    def fetch_record(self, record: PromptRecord) -> bytes:
        return self.store.get_verified(record.object_key, record.sha256)

    def publish_state(self, data: bytes) -> str:
        """Store an optimizer state object (checked first) by its sha256; a no-op when it is already held."""
        from .optimizer_state import parse_state

        parse_state(data)
        sha = sha256_hex(data)
        key = state_key(sha)
        if not self.store.exists(key):
            self.store.put(key, data)
        return sha

    def fetch_state(self, sha256: str) -> bytes:
        """The optimizer state object ``sha256`` names, verified against it."""
        return self.store.get_verified(state_key(sha256), sha256)

    def stream_record(self, record: PromptRecord) -> Iterator[bytes]:
        """``fetch_record`` in the shape ``RemoteRegistry`` streams (here the store verified the whole object)."""
        yield self.fetch_record(record)

    # --- aliases and lifecycle -----------------------------------------------------------------------------------

    def set_alias(self, ref: str, alias: str) -> PromptRecord:
        if check_alias(alias) == LATEST:
            raise InvalidInput("'latest' moves by itself on publish; choose another alias")
        record = self.get(ref)
        with self.db.session(write=True) as session:
            crud.set_alias(session, name=record.name, alias=alias, prompt_id=record.id)
        return self.get(f"{record.name}@{alias}")

    def deprecate(self, ref: str) -> PromptRecord:
        record = self.get(ref)
        with self.db.session(write=True) as session:
            crud.deprecate(session, prompt=record)
        return self.get(record.ref)

    def gc(self, *, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False,
           allow_empty_db: bool = False) -> list[ObjectInfo]:
        """Remove store objects no prompt references, and partial uploads a killed writer left, that are older than
        the grace period.

        A DB that references nothing in front of a store that holds objects is refused (unless ``allow_empty_db``):
        that is a lost or replaced DB, and collecting would delete every prompt; ``reindex`` re-registers them.
        """
        if not math.isfinite(grace_seconds) or not 0 <= grace_seconds <= MAX_GC_GRACE_SECONDS:
            raise InvalidInput(f"grace must be between 0 and {MAX_GC_GRACE_SECONDS} seconds")
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
        with self.db.session() as session:
            referenced = crud.referenced_shas(session) | crud.referenced_state_shas(session)
        stored = [*self.store.list(), *self.store.list(prefix=STATE_PREFIX)]
        if not referenced and stored and not allow_empty_db:
            raise Conflict(
                f"the metadata DB references no prompt but {self.store.url} holds {len(stored)} object(s): a lost or "
                "replaced DB? `ctpreg reindex` registers them again; `ctpreg gc --allow-empty-db` deletes them"
            )
        orphans = [item for item in stored if sha_of_key(item.key) not in referenced and item.modified <= cutoff]
        removed = []
        for item in orphans:
            with self.db.session(write=not dry_run) as session:
                if not dry_run:
                    crud.publish_gate_held(session, exclusive=True)  # publishes in flight commit first
                fresh = next(iter(self.store.list(prefix=item.key)), None)
                if fresh is None or fresh.modified > cutoff:  # gone, or touched by a publish that reuses it
                    continue
                sha = sha_of_key(item.key) or ""
                if crud.is_referenced(session, sha256=sha) or sha in crud.referenced_state_shas(session):
                    continue  # claimed meanwhile
                if not dry_run:
                    self.store.delete(item.key)
            removed.append(item)
        for partial in self.store.partial_uploads(cutoff):
            if not dry_run:
                self.store.delete(partial.key)
            removed.append(partial)
        return removed

    def reindex(self) -> list[PublishResult]:
        """Register every artifact in the store into this DB (each under its default name; artifacts describe
        themselves), e.g. after the DB was lost. Idempotent: prompts already registered are left as they are."""
        from .artifacts import parse_artifact

        results = []
        for item in self.store.list():
            sha = sha_of_key(item.key)
            if sha is None:
                continue
            data = self.store.get_verified(item.key, sha)
            results.append(self.publish_bytes(data, artifact=parse_artifact(data, source=item.key)))
        return results

    # --- base models ---------------------------------------------------------------------------------------------

    def add_model(self, model: BaseModelRecord) -> BaseModelRecord:
        for what, value in (("hidden size", model.hidden_size), ("vocab size", model.vocab_size)):
            if value is not None and not 1 <= value <= MAX_SIZE:
                raise InvalidInput(f"{what} must be an integer in 1..{MAX_SIZE}, got {value}")
        with self.db.session(write=True) as session:
            crud.ensure_base_model(
                session, name=model.name, fingerprint=model.fingerprint, hidden_size=model.hidden_size,
                vocab_size=model.vocab_size, architecture=model.architecture, source=model.source,
            )
        registered = self.get_model(model.name)
        assert registered is not None
        return registered

    def get_model(self, name: str) -> BaseModelRecord | None:
        with self.db.session() as session:
            return crud.get_base_model(session, name=name)

    def list_models(self) -> list[BaseModelRecord]:
        with self.db.session() as session:
            return crud.list_base_models(session)

    # --- matching ------------------------------------------------------------------------------------------------

    def candidates(
        self, target: Target, *, limit: int = DEFAULT_CANDIDATES, eval_key: str | None = None
    ) -> list[Candidate]:
        """The best ``limit`` compatible, non-deprecated prompts for ``target``, ranked; ``NoCompatiblePrompt`` if none.

        The database returns the head of the metadata order; prompts with evidence on this target join it, and the
        matcher ranks the union, which is exactly the head of the full ranking. Evidence counts only when it was
        measured on this target: the same identity when ``target.identity`` is set (a user's checkpoint or loaded
        model), else a ctpreg-compressed model of the spec; with ``eval_key``, only on those windows.
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        with self._reads() as reads:
            base = self._known_models.get(target.model) or reads.base_model(target.model)
            if base is None or base.id is None:
                raise NoCompatiblePrompt(f"model {target.model!r} is not registered, so no prompt is known to fit it")
            self._known_models[target.model] = base
            evidence, prompts = reads.gather(target=target, base=base, limit=limit, eval_key=eval_key)
        if not prompts:
            raise NoCompatiblePrompt(f"no prompt shares the embedding space of {target.model!r}")
        return rank(target, prompts, evidence)[:limit]

    def evidence(self, model: str) -> list[Evidence]:
        """Every measurement recorded on targets of ``model``, oldest first."""
        with self.db.session() as session:
            return crud.evidence_for(session, target_model=model)

    def models_with_fingerprint(self, fingerprint: str) -> list[BaseModelRecord]:
        """Registered base models of one embedding-space class (what a loaded model or checkpoint can use)."""
        with self.db.session() as session:
            return crud.base_models_by_fingerprint(session, fingerprint=fingerprint)

    def base_model_for(self, fingerprint: str, wanted: str | None = None) -> str:
        """The registered base model a model of this fingerprint is (``wanted`` chooses among several)."""
        names = [m.name for m in self.models_with_fingerprint(fingerprint)]
        if wanted is not None:
            if wanted not in names:
                known = ", ".join(names) or "none"
                raise InvalidInput(
                    f"{wanted!r} is not a registered model of this embedding space (registered with it: {known})"
                )
            return wanted
        if not names:
            raise NoCompatiblePrompt(f"no registered base model has fingerprint {fingerprint[:19]}…, so no prompt fits")
        if len(names) > 1:
            raise InvalidInput(f"several registered models share this embedding space ({', '.join(names)}); "
                               "say which with --model / model_name=")
        return names[0]

    def record_evidence(
        self, target: Target, prompt: PromptRecord, measurement: Measurement, *, accepted: bool
    ) -> None:
        spec = target.spec
        if spec is None:
            raise InvalidInput("evidence needs a fully specified target compression (method and level)")
        figures = {"ppl_without": measurement.ppl_without, "ppl_with": measurement.ppl_with,
                   "ppl_full": measurement.ppl_full}
        for key, value in figures.items():  # identical on both backends: SQLite would store NaN as NULL
            if value is not None and not is_perplexity(value):
                raise InvalidInput(f"{key} must be a finite perplexity >= 1, got {value}: nothing recorded")
        if target.identity is not None and measurement.target_key != target.identity:
            if measurement.target_key != LEGACY:
                raise InvalidInput(f"measurement of {measurement.target_key} cannot be evidence for {target.identity}")
            measurement = replace(measurement, target_key=target.identity)
        with self.db.session(write=True) as session:
            crud.add_evidence(
                session, prompt_id=prompt.id, target_model=target.model, target_compression=spec.canonical,
                measurement=measurement, accepted=accepted,
            )

    # --- API tokens (``ctpreg serve``) ---------------------------------------------------------------------------

    def create_token(self, *, scope: str, name: str, expires_at: datetime | None = None) -> tuple[TokenRecord, str]:
        """A new token of ``scope``: its record, and its value, which exists only in this return value."""
        check_scope(scope)
        check_token_name(name)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidInput("a token's expiry needs a time zone")
            try:
                expires_at = expires_at.astimezone(UTC)  # SQLite keeps no offset: store every expiry in UTC
            except OverflowError:  # a moment at the calendar's ends, shifted by its offset
                raise InvalidInput("a token's expiry lies outside the calendar") from None
        token: NewToken = new_token()
        with self.db.session(write=True) as session:
            record = crud.add_token(session, token=token, name=name, scope=scope, created_by=self.user,
                                    expires_at=expires_at)
        return record, token.value

    def list_tokens(self) -> list[TokenRecord]:
        with self.db.session() as session:
            return crud.list_tokens(session)

    def revoke_token(self, public_id: str) -> TokenRecord:
        with self.db.session(write=True) as session:
            return crud.revoke_token(session, public_id=check_public_id(public_id))

    def authenticate(self, value: str, needed: str) -> TokenRecord:
        """The token ``value`` if it is active and its scope covers ``needed`` (``Unauthorized`` / ``Forbidden``)."""
        public_id, secret = split_token(value)
        with self.db.session() as session:
            found = crud.find_token(session, public_id=public_id)
        record, stored = found if found is not None else (None, "0" * 64)
        return authorize(record, secret_matches(secret, stored), needed)
