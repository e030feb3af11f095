"""What ``cmworker dev`` emulates of Foundry beyond the job endpoints: application permissions and sources.

A module with application permissions gets ``CLIENT_ID``/``CLIENT_SECRET`` and a CA bundle
(``DEFAULT_CA_PATH``); a module with sources gets the files naming their secrets and configurations.
``cmworker dev`` gives the served app both from its embedded runtime (the client it issued, its token
endpoint as ``FOUNDRY_HOST``, the sources of a ``--sources`` file), so code written for Foundry runs
unchanged. The variables go into the dev server's own environment: the template and the workers are
started from it and inherit them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cmworker.errors import ConfigError

SOURCES_HELP = ('a JSON file of the sources to emulate: {"NAME": {"secrets": {"KEY": "VALUE"}, "url": '
                '"https://...", "configuration": {...}}} (each field optional); the app gets the files '
                "SOURCE_CREDENTIALS and SOURCE_CONFIGURATIONS_PATH name, as in Foundry")
_SOURCE_FIELDS = frozenset({"secrets", "url", "configuration"})


class _Runtime(Protocol):
    @property
    def foundry_host(self) -> str: ...

    def application_env(self) -> dict[str, str]: ...

    def sources_env(self, sources: Mapping[str, Mapping[str, Any]]) -> dict[str, str]: ...


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", metavar="FILE", help=SOURCES_HELP)


def read_sources(path: str) -> dict[str, dict[str, Any]]:
    """The sources of a ``--sources`` file, checked; ``ConfigError`` naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"--sources {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--sources {path}: not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"--sources {path}: expected an object of sources by name, found "
                          f"{type(table).__name__}")
    for name, source in table.items():
        where = f"--sources {path}: source {name!r}"
        if not isinstance(source, dict):
            raise ConfigError(f"{where} is not an object")
        unknown = sorted(set(source) - _SOURCE_FIELDS)
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)} (expected secrets, url, "
                              "configuration)")
        secrets = source.get("secrets", {})
        if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
            raise ConfigError(f"{where}: secrets must be an object of strings")
        if "url" in source and not isinstance(source["url"], str):
            raise ConfigError(f"{where}: url must be a string")
    return table


def emulated_env(runtime: _Runtime, sources_file: str | None) -> tuple[dict[str, str], list[str]]:
    """The variables the served app gets from ``runtime``, and what to tell the user about them.

    ``sources_file`` is read first, so a bad file stops ``cmworker dev`` before it serves."""
    sources = read_sources(sources_file) if sources_file else None
    env = runtime.application_env()
    notes = [f"application permissions emulated: CLIENT_ID={env['CLIENT_ID']}, CLIENT_SECRET, DEFAULT_CA_PATH "
             f"(the runtime's CA) and FOUNDRY_HOST={runtime.foundry_host} are set; tokens come from "
             f"https://{runtime.foundry_host}/multipass/api/oauth2/token"]
    if sources is not None:
        env.update(runtime.sources_env(sources))
        notes.append(f"sources emulated from {Path(sources_file or '').name}: {', '.join(sorted(sources)) or 'none'} "
                     f"(SOURCE_CREDENTIALS={env['SOURCE_CREDENTIALS']})")
    return env, notes
