"""Entry point: run the app and turn errors into exit codes in one place.

ctpreg's own errors print one line to stderr and exit with their code; ``CTPREG_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from ctpreg.registry.errors import CtpregError

from .app import app


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, prog_name="ctpreg", standalone_mode=False)
    except CtpregError as exc:
        if os.environ.get("CTPREG_DEBUG"):
            traceback.print_exc()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # files the user named: missing folders, permissions, full disks
        if os.environ.get("CTPREG_DEBUG"):
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {_one_line(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return 1
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: typer bundles its own click, so these are typer's classes
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


def _one_line(message: str) -> str:
    """Errors are one line: control characters a user typed (a newline in a path) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
