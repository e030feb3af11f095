"""``cmworker run`` (the container entrypoint) and ``cmworker dev`` (the same, on the embedded runtime)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmworker import logs
from cmworker.config import Config, add_config_flags, flags_from_args, load_config
from cmworker.errors import CmworkerError

if TYPE_CHECKING:
    from cmworker.replica.health import Reporter
    from cmworker.replica.poller import Observer


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_positional", nargs="?", metavar="APP", help="module, module:attribute, or path "
                        "to a .py file (default: `app` in cmworker.toml)")
    add_config_flags(parser)


def configure_run(parser: argparse.ArgumentParser) -> None:
    _configure(parser)


def configure_dev(parser: argparse.ArgumentParser) -> None:
    _configure(parser)
    parser.add_argument("--replicas", type=int, default=1, help="embedded runtime replicas (default 1)")
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="do not reload the app when its .py files change")
    from cmworker.commands.foundry_env import add_flags
    from cmworker.commands.pipeline import add_dev_flags

    add_flags(parser)
    add_dev_flags(parser)


def _load(args: argparse.Namespace) -> Config:
    flags = flags_from_args(args)
    if args.app_positional:
        flags["app"] = args.app_positional
    return load_config(args.config, flags=flags)


def serve(config: Config, environ: Mapping[str, str] | None = None, observer: Observer | None = None) -> int:
    """Serve the app against the runtime described by ``environ`` until a signal or a fatal error;
    ``observer`` is told of each step of each job (``cmworker.replica.poller.Observer``)."""
    from cmworker.replica.health import Reporter

    with Reporter.for_config(config) as health:  # the status `cmworker health` reads, from now to exit
        return _serve(config, environ, observer, health)


def _serve(config: Config, environ: Mapping[str, str] | None, observer: Observer | None, health: Reporter) -> int:
    from cmworker.proctitle import set_title
    from cmworker.replica.poller import Poller
    from cmworker.replica.service import Service, discover

    set_title("cmworker: parent")
    # Discovery may wait for the runtime's files. As PID 1 a signal without a handler is ignored, so
    # until the poller installs its own, SIGTERM/SIGINT end the process: no job is held yet.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, _stop_before_serving) for signum in _STOP_SIGNALS}
    try:
        endpoints = discover(environ, wait=config.startup_wait)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    service = Service(endpoints, long_poll_timeout=config.poll_timeout)
    poller = Poller(config, service, health.observer(observer))
    health.watch(poller)
    return poller.run()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_before_serving(signum: int, frame: object) -> None:
    logging.getLogger("cmworker").warning("stopping on %s before connecting to the runtime; no job was held",
                                          signal.Signals(signum).name)
    raise SystemExit(0)


def _configure_logs(config: Config, dev: bool) -> None:
    fmt = config.log_format
    if fmt == "auto":
        fmt = "console" if dev and sys.stderr.isatty() else "sls"
    logs.configure(fmt, config.log_level, stream=sys.stderr if fmt == "console" else sys.stdout,
                   logger_levels=config.logger_levels)


def _fatal(exc: BaseException) -> int:
    logging.getLogger("cmworker").critical("%s", exc)
    return 2


def run_run(args: argparse.Namespace, observer: Observer | None = None) -> int:
    logs.configure("sls", "INFO")  # until the configuration is read: even its errors are SLS lines
    try:
        config = _load(args)
        _configure_logs(config, dev=False)
        return serve(config, observer=observer)
    except CmworkerError as exc:
        return _fatal(exc)


def run_dev(args: argparse.Namespace) -> int:
    if getattr(args, "pipeline", False):
        from cmworker.commands.pipeline import run_pipeline_dev

        return run_pipeline_dev(args)
    logs.configure("console", "INFO", stream=sys.stderr)
    from cmworker.commands.foundry_env import emulated_env
    from cmworker.runtime.discovery import publish, withdraw
    from cmworker.runtime.embedded import EmbeddedRuntime

    # Until the replica handles them itself, a signal ends the dev server through its ``finally`` clauses:
    # the runtime's temporary directory (its key, the caller's token) and its announcement are removed.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        config = _load(args)
        _configure_logs(config, dev=True)
        with EmbeddedRuntime(replicas=args.replicas, max_concurrent_tasks=config.workers,
                             long_poll=_DEV_LONG_POLL) as runtime:
            emulated, notes = emulated_env(runtime, args.sources)
            os.environ.update(emulated)  # the template and workers inherit it: the app sees Foundry's variables
            announcement = publish(runtime)
            try:
                env = {**os.environ, **runtime.env(0)}
                logging.getLogger("cmworker").info(
                    "embedded runtime at %s; in another terminal try: cmworker call FUNCTION '{...}'",
                    runtime.query_url)
                for note in notes:
                    logging.getLogger("cmworker").info("%s", note)
                return _serve_dev(config, env, args.reload)
            finally:
                withdraw(announcement)
    except CmworkerError as exc:
        return _fatal(exc)


def _serve_dev(config: Config, environ: Mapping[str, str], reload: bool) -> int:
    from cmworker.commands.dev import DevConsole
    from cmworker.proctitle import set_title
    from cmworker.replica.poller import Poller
    from cmworker.replica.service import Service, discover

    set_title("cmworker: parent")

    if reload:
        # Bytecode caches are checked by the source's mtime in whole seconds and its size: an edit made in
        # the second the cache was written, keeping the size (``return 1`` -> ``return 2``), would import
        # the old code. Templates started from here inherit this and compile the app from its source.
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    # No status file for `cmworker health` here: probes are the platform's, and a dev server leaves
    # nothing behind in the temporary directory when it stops.
    console = DevConsole(config, reload)
    poller = Poller(config, Service(discover(environ, wait=config.startup_wait),
                                    long_poll_timeout=config.poll_timeout), console.observe)
    console.attach(poller)
    try:
        return poller.run()
    finally:
        console.stop()


# How long the embedded runtime holds an idle GET job. Stopping waits for the GET in flight to come back:
# held 5 s (the default), every Ctrl-C of `cmworker dev` took 5 s. A job still goes out the moment it
# is queued; only an idle replica's GETs come more often, on loopback.
_DEV_LONG_POLL = 1.0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
