"""Errors over HTTP in one shape, and what of them a caller may read.

Every error answer is ``{"error": {"type", "message", "exit_code", "request_id"}}``: the ctpreg error class (the
client raises the same class), its message, the CLI's exit code for it, and the id the server's log files the detail
under. The message never names where the registry keeps its data: errors whose messages describe the registry's
insides (an unreachable DB or store, a corrupt object) get a fixed message by class, and every other message has the
registry's own locations (DB URL, host, database, store URL, folder, bucket, endpoint) cut out. Either way the log
line with the same request id has the full detail.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterable

from fastapi.responses import JSONResponse
from starlette.types import Scope

from ctpreg.registry import errors

log = logging.getLogger("ctpreg.access")
REQUEST_ID = "request_id"  # the key of the request's id in the ASGI scope's state
STATUS: dict[type[errors.CtpregError], int] = {
    errors.InvalidInput: 400, errors.InvalidArtifact: 400, errors.Unauthorized: 401, errors.Forbidden: 403,
    errors.NoCompatiblePrompt: 404, errors.NoHelpfulPrompt: 404, errors.NotFound: 404, errors.Conflict: 409,
    errors.StoreError: 503, errors.DatabaseError: 503,
}
INTERNAL: dict[type[errors.CtpregError], str] = {  # class -> what a caller reads instead of its message
    errors.DatabaseError: "the metadata DB is unavailable",
    errors.StoreError: "the object store is unavailable",
    errors.IntegrityError: "the stored object does not match its recorded sha256, so it is not served",
}
HIDDEN = "<hidden>"


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_of(scope: Scope) -> str:
    """The id ``RequestIds`` gave this request (a fresh one for a request that bypassed it)."""
    state = scope.setdefault("state", {})
    return state.setdefault(REQUEST_ID, new_request_id())


def status_of(exc: errors.CtpregError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


class Scrubber:
    """Turns an error into what a caller may read, logging what it held back."""

    def __init__(self, locations: Iterable[str] = ()) -> None:
        words = sorted({w for w in locations if w and len(w) >= 3}, key=len, reverse=True)
        self._pattern = (re.compile("|".join(rf"(?<![\w.-]){re.escape(w)}(?![\w-])" for w in words))
                         if words else None)

    def message(self, exc: errors.CtpregError, request_id: str) -> str:
        detail = str(exc)
        for cls in type(exc).__mro__:
            if cls in INTERNAL:
                self._log(exc, detail, request_id)
                return f"{INTERNAL[cls]}; the server's log has the detail under request id {request_id}"
        if self._pattern is None or self._pattern.search(detail) is None:
            return detail
        self._log(exc, detail, request_id)
        return self._pattern.sub(HIDDEN, detail)

    @staticmethod
    def _log(exc: BaseException, detail: str, request_id: str) -> None:
        log.warning(json.dumps({"request_id": request_id, "error": type(exc).__name__, "detail": detail}))

    def response(self, exc: errors.CtpregError, request_id: str, status: int | None = None) -> JSONResponse:
        """Every error in one shape; ``status`` overrides the class's."""
        status = status or status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"error": {"type": type(exc).__name__, "message": self.message(exc, request_id),
                          "exit_code": exc.exit_code, REQUEST_ID: request_id}}
        return JSONResponse(body, status_code=status, headers=headers)

    def unexpected(self, exc: BaseException, request_id: str) -> JSONResponse:
        """A bug, not a refusal: its traceback goes to the log, the caller reads only that it happened."""
        log.error(json.dumps({"request_id": request_id, "error": type(exc).__name__}), exc_info=exc)
        body = {"error": {"type": errors.CtpregError.__name__, "exit_code": errors.CtpregError.exit_code,
                          "message": f"internal error; the server's log has the detail under request id {request_id}",
                          REQUEST_ID: request_id}}
        return JSONResponse(body, status_code=500)
