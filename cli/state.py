"""What every command shares: settings read once in the app callback, and the registry/client built on demand."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import typer

from ctpreg.registry import Client, Registry, Settings
from ctpreg.registry.errors import OfflineMiss
from ctpreg.registry.service import open_registry

if TYPE_CHECKING:
    from ctpreg.registry.remote import RemoteRegistry


@dataclass
class CliState:
    settings: Settings

    @cached_property
    def registry(self) -> Registry | RemoteRegistry:
        if self.settings.offline:
            raise OfflineMiss("CTPREG_OFFLINE=1: this command needs the registry; offline, only `ctpreg fetch` of "
                              "previously fetched references and the Python client's cached resolutions work")
        return open_registry(self.settings)

    @cached_property
    def client(self) -> Client:
        return Client(self.settings, registry=None if self.settings.offline else self.registry)


def state(ctx: typer.Context) -> CliState:
    return ctx.find_root().obj
