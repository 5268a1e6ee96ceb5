"""Progress bars on stderr (tqdm), shown on the first rank only and hidden when CTPREG_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from .distributed import rank_and_world

T = TypeVar("T")


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    from tqdm.auto import tqdm

    disable = rank_and_world()[0] != 0 or os.environ.get("CTPREG_PROGRESS", "1") == "0"
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
