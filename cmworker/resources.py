"""The inputs and outputs of a pipeline-mode module (``pipeline_resources()``) and its job token
(``pipeline_token()``, also in ``cmworker.auth``).

In pipeline mode Foundry mounts a JSON file, named by ``RESOURCE_ALIAS_MAP``, mapping each identifier
given in the module's configuration to the resource's RID and branch::

    {"orders": {"rid": "ri.foundry.main.dataset.…", "branch": "master"},
     "scored": {"rid": "ri.foundry.main.dataset.…", "branch": null}}

Outside pipeline mode the variable is not set, and asking for the resources raises ``NotProvided``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

from cmworker import logs
from cmworker.errors import NotProvided

__all__ = ["PipelineResource", "pipeline_resource", "pipeline_resources", "pipeline_token"]

RESOURCE_ALIAS_MAP = "RESOURCE_ALIAS_MAP"
BUILD2_TOKEN = "BUILD2_TOKEN"


class PipelineResource(NamedTuple):
    """One input or output: its RID and branch (``None``: the resource's default branch)."""

    rid: str
    branch: str | None = None

    def branch_or(self, default: str = "master") -> str:
        return self.branch or default


@dataclass(frozen=True)
class _Problem:
    path: str

    def __call__(self, what: str) -> NotProvided:
        return NotProvided(f"{RESOURCE_ALIAS_MAP} names {self.path}, {what}")


def pipeline_resources() -> dict[str, PipelineResource]:
    """Every input and output of this pipeline-mode module, by the identifier given in its configuration."""
    path = os.environ.get(RESOURCE_ALIAS_MAP)
    if not path:
        raise NotProvided(f"{RESOURCE_ALIAS_MAP} is not set: resources are provided to a compute module "
                          "running in pipeline mode only (locally: cmworker dev --pipeline --resource ALIAS=RID)")
    problem = _Problem(path)
    try:
        with open(path, encoding="utf-8") as handle:
            table: Any = json.load(handle)
    except OSError as exc:
        raise problem(f"which cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise problem(f"which is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise problem("which does not hold a JSON object")
    resources = {}
    for alias, entry in table.items():
        rid = entry.get("rid") if isinstance(entry, dict) else None
        branch = entry.get("branch") if isinstance(entry, dict) else None
        if not isinstance(rid, str) or not (branch is None or isinstance(branch, str)):
            raise problem(f"whose entry {alias!r} is not {{\"rid\": string, \"branch\": string or null}}")
        resources[str(alias)] = PipelineResource(rid, branch)
    return resources


def pipeline_resource(alias: str) -> PipelineResource:
    """The resource configured as ``alias``; ``KeyError`` naming the aliases there are."""
    resources = pipeline_resources()
    if alias not in resources:
        raise KeyError(f"no pipeline resource {alias!r}; this module has: {', '.join(sorted(resources)) or 'none'}")
    return resources[alias]


def pipeline_token() -> str:
    """The job token of a pipeline-mode module, read from the file named by ``BUILD2_TOKEN`` at each call
    (Foundry may replace the file). It has permissions on the module's inputs and outputs only, and is
    registered as a log secret."""
    path = os.environ.get(BUILD2_TOKEN)
    if not path:
        raise NotProvided(f"{BUILD2_TOKEN} is not set: it names the file holding the job token of a compute "
                          "module running in pipeline mode (locally: cmworker dev --pipeline)")
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise NotProvided(f"{BUILD2_TOKEN} names {path}, which cannot be read: {exc.strerror}") from None
    if not token:
        raise NotProvided(f"{BUILD2_TOKEN} names {path}, which is empty")
    logs.add_secret(token)
    return token
