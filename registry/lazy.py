"""Modules that load on first attribute access, so code paths that never touch them never pay their import.

A stand-in answers every attribute from the real module, which it imports on first use through the import system
(whose per-module locks make a thread that asks for a module another thread is still loading wait for it). The
standard library's ``importlib.util.LazyLoader`` is not safe when several threads touch a module first at once
before Python 3.12 (a server's worker threads did: an attribute was missing mid-load, and one request in a few
hundred answered 500), and ctpreg runs on 3.11. The real module stays the one in ``sys.modules``, so what patches
it patches what the stand-in answers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


class _Deferred(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attribute)


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(name)
    return _Deferred(name)
