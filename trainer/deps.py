"""Say which extra to install instead of failing with an ImportError deep inside a command."""

from __future__ import annotations

import importlib.util

from ctpreg.registry.errors import MissingExtra

TRAIN_MODULES = ("torch", "transformers", "safetensors")


def require(*modules: str, extra: str = "train") -> None:
    missing = [name for name in modules or TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        torch_first = "pip install torch==2.13.0 && " if "torch" in missing else ""
        raise MissingExtra(f"this command needs {', '.join(missing)}: {torch_first}pip install 'ctpreg[{extra}]'")
