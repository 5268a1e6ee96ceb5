"""Deferred modules: nothing loads before an attribute is read, and many threads reading first at once all get it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from ctpreg.registry.lazy import lazy_module


def test_threads_that_touch_a_deferred_module_first_all_see_it_loaded(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(0.3)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = lazy_module("slow_to_import")
    assert "slow_to_import" not in sys.modules, "nothing is imported before an attribute is read"
    seen, failures = [], []

    def read() -> None:
        try:
            seen.append(module.VALUE)
        except Exception as exc:  # the failure this guards against: an attribute missing mid-load
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.delitem(sys.modules, "slow_to_import")
    assert failures == [] and seen == [42] * 8


def test_a_missing_module_is_refused_at_once() -> None:
    with pytest.raises(ModuleNotFoundError):
        lazy_module("no_such_module_anywhere")
