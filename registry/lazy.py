"""Modules that load on first attribute access, so code paths that never touch them never pay their import.

A stand-in module imports the real one, under a lock, the first time an attribute is read, then takes over its
names. The standard library's ``importlib.util.LazyLoader`` is not safe when several threads touch a module first at
the same time before Python 3.12 (a server's worker threads did: an attribute was missing mid-load, one request in
a few hundred answered 500), and ctpreg runs on 3.11.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

_loading = threading.Lock()


class _Deferred(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        with _loading:
            real = importlib.import_module(self.__name__)
            self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(name)
    return _Deferred(name)
