"""Printing: JSON to stdout for machines (``--json``), rich tables for people, messages to stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def console() -> Console:
    """Rich console for tables; when stdout is not a terminal (logs, CI) it would wrap at 80 columns, so widen it."""
    from rich.console import Console  # imported on use: --json output never pays for rich

    plain = Console()
    return Console(soft_wrap=True, width=None if plain.is_terminal else 160)


def info(message: str) -> None:
    """One message to stderr, printed literally: names, datasets and paths come from users and artifacts, so
    nothing in them may act as rich markup (``[/bold]`` would crash, ``[link=...]`` would become a hyperlink)."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(message, highlight=False, markup=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table whose title and cells are literal text (``Text``), never markup, for the same reason as ``info``."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=Text(title) if title is not None else None, show_lines=False, header_style="bold")
    for column in columns:
        grid.add_column(Text(column), overflow="fold")
    for row in rows:
        grid.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console().print(grid)


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Route library chatter (GPTQModel, llmcompressor banners) to stderr so --json stdout stays parseable."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not to the stream that existed when logging was set up."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def show_logs() -> None:
    """ctpreg's own progress messages, one line each on stderr."""
    logger = logging.getLogger("ctpreg")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # libraries that configure the root logger would print every line twice
