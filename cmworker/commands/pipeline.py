"""``cmworker pipeline`` (a pipeline-mode container's entrypoint) and ``cmworker dev --pipeline``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cmworker import logs
from cmworker.config import Config, add_config_flags, flags_from_args, load_config
from cmworker.errors import CmworkerError, ConfigError


def configure_pipeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_positional", nargs="?", metavar="APP", help="module, module:attribute, or path "
                        "to a .py file with a @cmworker.pipeline function (default: `app` in cmworker.toml)")
    add_config_flags(parser)


def add_dev_flags(parser: argparse.ArgumentParser) -> None:
    """``cmworker dev``'s flags for pipeline mode."""
    parser.add_argument("--pipeline", action="store_true",
                        help="run the app's @cmworker.pipeline loop, with BUILD2_TOKEN and RESOURCE_ALIAS_MAP "
                             "provided by the embedded runtime")
    parser.add_argument("--resource", action="append", default=[], metavar="ALIAS=RID[@BRANCH]",
                        help="a pipeline input or output, as RESOURCE_ALIAS_MAP will list it (repeatable)")


def parse_resource(text: str) -> tuple[str, tuple[str, str | None]]:
    """``ALIAS=RID`` or ``ALIAS=RID@BRANCH`` as ``(alias, (rid, branch))``."""
    alias, sep, target = text.partition("=")
    rid, _, branch = target.partition("@")
    if not sep or not alias.strip() or not rid.strip():
        raise ConfigError(f"--resource {text!r}: expected ALIAS=RID or ALIAS=RID@BRANCH")
    return alias.strip(), (rid.strip(), branch.strip() or None)


def _load(args: argparse.Namespace) -> Config:
    flags = flags_from_args(args)
    if args.app_positional:
        flags["app"] = args.app_positional
    return load_config(args.config, flags=flags)


def _supervise(config: Config, env: dict[str, str]) -> int:
    from cmworker.pipeline_mode.supervisor import PipelineSupervisor

    return PipelineSupervisor(config.require_app(), shutdown_grace=config.shutdown_grace,
                              log_level=config.log_level, logger_levels=config.logger_levels, env=env).run()


def run_pipeline(args: argparse.Namespace) -> int:
    logs.configure("sls", "INFO")
    try:
        config = _load(args)
        logs.configure("console" if config.log_format == "console" else "sls", config.log_level,
                       logger_levels=config.logger_levels)
        return _supervise(config, dict(os.environ))
    except CmworkerError as exc:
        logging.getLogger("cmworker").critical("%s", exc)
        return 2


def run_pipeline_dev(args: argparse.Namespace) -> int:
    """``cmworker dev --pipeline``: the loop supervised as in a container, its environment emulated."""
    logs.configure("console", "INFO", stream=sys.stderr)
    from cmworker.commands.foundry_env import read_sources
    from cmworker.runtime.embedded import EmbeddedRuntime

    try:
        config = _load(args)
        fmt = "console" if config.log_format in ("auto", "console") and sys.stderr.isatty() else "sls"
        logs.configure(fmt, config.log_level, stream=sys.stderr if fmt == "console" else sys.stdout,
                       logger_levels=config.logger_levels)
        resources = dict(parse_resource(text) for text in args.resource)
        with EmbeddedRuntime(long_poll=1.0) as runtime:
            env = {**os.environ, **runtime.pipeline_env(resources)}
            if args.sources:
                env.update(runtime.sources_env(read_sources(args.sources)))
            logging.getLogger("cmworker").info(
                "pipeline mode emulated: BUILD2_TOKEN=%s RESOURCE_ALIAS_MAP=%s (%d resources)",
                env["BUILD2_TOKEN"], env["RESOURCE_ALIAS_MAP"], len(resources))
            return _supervise(config, env)
    except CmworkerError as exc:
        logging.getLogger("cmworker").critical("%s", exc)
        return 2
