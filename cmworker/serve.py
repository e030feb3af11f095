"""``cmworker run`` (the container entrypoint) and ``cmworker dev`` (the same, on the embedded runtime)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from cmworker.config import Config, add_config_flags, flags_from_args, load_config
from cmworker.errors import CmworkerError


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_positional", nargs="?", metavar="APP", help="module, module:attribute, or path "
                        "to a .py file (default: `app` in cmworker.toml)")
    add_config_flags(parser)


def configure_run(parser: argparse.ArgumentParser) -> None:
    _configure(parser)


def configure_dev(parser: argparse.ArgumentParser) -> None:
    _configure(parser)
    parser.add_argument("--replicas", type=int, default=1, help="embedded runtime replicas (default 1)")


def _load(args: argparse.Namespace) -> Config:
    flags = flags_from_args(args)
    if args.app_positional:
        flags["app"] = args.app_positional
    return load_config(args.config, flags=flags)


def serve(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """Serve the app against the runtime described by ``environ`` until a signal or a fatal error."""
    from cmworker.poller import Poller, Settings
    from cmworker.service import Service, discover

    endpoints = discover(environ)
    service = Service(endpoints)
    settings = Settings(workers=config.workers, limits_for=config.limits_for, kill_grace=config.kill_grace,
                        max_jobs_per_worker=config.max_jobs_per_worker,
                        shutdown_grace=config.shutdown_grace)
    poller = Poller(config.require_app(), service, settings, check_functions=config.check_functions)
    return poller.run()


def run_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(_load(args))
    except CmworkerError as exc:
        print(f"cmworker: {exc}", file=sys.stderr)
        return 2


def run_dev(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cmworker.runtime.discovery import publish, withdraw
    from cmworker.runtime.embedded import EmbeddedRuntime

    try:
        config = _load(args)
        with EmbeddedRuntime(replicas=args.replicas, max_concurrent_tasks=config.workers) as runtime:
            announcement = publish(runtime)
            try:
                env = {**os.environ, **runtime.env(0)}
                print(f"cmworker dev: embedded runtime at {runtime.query_url}; in another terminal try: "
                      "cmworker call FUNCTION '{...}'", file=sys.stderr, flush=True)
                return serve(config, env)
            finally:
                withdraw(announcement)
    except CmworkerError as exc:
        print(f"cmworker: {exc}", file=sys.stderr)
        return 2
