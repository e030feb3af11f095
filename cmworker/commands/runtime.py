"""``cmworker runtime`` (run the embedded runtime in the foreground) and ``cmworker call`` (query it).

The command-line parser imports this module to build itself, so everything heavy (TLS, HTTP, the
runtime) is imported inside the ``run_`` functions.

Exit codes of ``cmworker call``: 0 the function answered a result (printed as JSON on stdout); 1 it
answered an error (kind and message on stderr); 2 no runtime could be reached, or bad arguments;
3 no answer within ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cmworker.units import parse_duration, parse_size

EXIT_ERROR_ANSWER = 1
EXIT_UNAVAILABLE = 2
EXIT_TIMEOUT = 3


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value}")
    return value


# -- cmworker runtime ------------------------------------------------------------------------


def configure_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=_positive_int, default=1, metavar="N",
                        help="number of replica endpoints sharing the queue (default 1)")
    parser.add_argument("--port", type=_port, default=0, metavar="PORT",
                        help="module port of replica 0; replica i gets PORT+i (default: free ports)")
    parser.add_argument("--query-port", type=_port, default=0, metavar="PORT",
                        help="port of the query API (default: a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--long-poll", type=_duration, default=5.0, metavar="SECONDS",
                        help="how long GET job waits for work before answering 204 (default 5s)")
    parser.add_argument("--max-concurrent-tasks", type=_positive_int, default=1, metavar="N",
                        help="each replica's MAX_CONCURRENT_TASKS (default 1)")
    parser.add_argument("--no-cap", dest="cap", action="store_false",
                        help="hand out jobs even to a replica already holding MAX_CONCURRENT_TASKS")
    parser.add_argument("--max-result-size", type=_size, default=32 * 2**20, metavar="SIZE",
                        help="result bodies above this get 413 (default 32MiB)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where to announce the runtime for `cmworker call` and keep its files "
                             "(default $CMWORKER_STATE_DIR, else ~/.cache/cmworker)")


def run_runtime(args: argparse.Namespace) -> int:
    import os
    import shutil
    import signal
    import threading

    from cmworker.runtime.discovery import publish, state_home, withdraw
    from cmworker.runtime.embedded import EmbeddedRuntime

    files = state_home(args.state_dir) / f"runtime-{os.getpid()}"
    runtime = EmbeddedRuntime(args.replicas, long_poll=args.long_poll, max_result_size=args.max_result_size,
                              cap=args.cap, max_concurrent_tasks=args.max_concurrent_tasks, state_dir=files,
                              host=args.host, port=args.port, query_port=args.query_port)
    stop = threading.Event()
    # Signal handlers only record; the main thread acts.
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    announcement = None
    try:
        runtime.start()
        announcement = publish(runtime, args.state_dir)
        _print_banner(runtime, announcement)
        stop.wait()
    except OSError as exc:  # typically: the requested port is taken
        print(f"cmworker runtime: cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if announcement is not None:
            withdraw(announcement)
        runtime.stop()
        shutil.rmtree(files, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("# embedded runtime stopped", file=sys.stderr)
    return 0


def _print_banner(runtime: Any, announcement: Any) -> None:
    out = sys.stdout
    out.write(f"# cmworker embedded runtime: query API {runtime.query_url}, "
              f"{runtime.replicas} replica(s) on port(s) {', '.join(map(str, runtime.ports))}\n")
    out.write(f"# announced in {announcement} (for `cmworker call` and cmworker.Client()); Ctrl-C stops it\n")
    for replica in range(1, runtime.replicas):
        out.write(f"# replica {replica}: source {runtime.state_dir / f'replica-{replica}' / 'env.sh'}\n")
    out.write("# environment of replica 0 (paste into the shell of any compute-module client):\n")
    out.write(runtime.env_exports(0))
    out.flush()


# -- cmworker call ---------------------------------------------------------------------------


def configure_call(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", help="name of the function (the query type)")
    parser.add_argument("payload", nargs="?", default=None,
                        help="the query as JSON, or - to read it from stdin (default {})")
    parser.add_argument("--url", help="query API URL (default: the running runtime's)")
    parser.add_argument("--token", help="caller token (default: the running runtime's)")
    parser.add_argument("--ca", help="CA bundle to verify the runtime with (default: the running runtime's)")
    parser.add_argument("--timeout", type=_duration, default=None, metavar="SECONDS",
                        help="give up waiting for the answer after this long (default: wait)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the runtime announced itself (default $CMWORKER_STATE_DIR, "
                             "else ~/.cache/cmworker)")


def run_call(args: argparse.Namespace) -> int:
    from cmworker.errors import JobError, RuntimeUnavailable
    from cmworker.runtime.client import Client

    try:
        payload = _payload(args.payload)
    except ValueError as exc:
        print(f"cmworker call: the payload is not JSON: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        with Client(args.url, token=args.token, ca=args.ca, state_dir=args.state_dir) as client:
            return _call(client, args.function, payload, args.timeout)
    except JobError as exc:
        print(_describe_error(exc), file=sys.stderr)
        return EXIT_ERROR_ANSWER
    except TimeoutError as exc:
        print(f"cmworker call: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except RuntimeUnavailable as exc:
        print(f"cmworker call: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # The runtime went away mid-call (a dev server stopping removes its CA bundle and closes its
        # port), or answered something that is not its API: say so, without a traceback.
        print(f"cmworker call: the runtime could not be reached or did not answer as expected: {exc}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE


def _call(client: Any, function: str, payload: Any, timeout: float | None) -> int:
    """Print a streaming job's items as they come, one JSON value a line; else its one result."""
    job_id = client.run(function, payload)
    streamed = False
    for item in client.stream(job_id, timeout):
        streamed = True
        if isinstance(item, bytes):
            sys.stdout.buffer.write(item + b"\n")
        else:
            sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()
    if not streamed:
        _print_result(client.get_result(job_id, timeout))
    return 0


def _describe_error(exc: Any) -> str:
    """An error answer as a person reads it: kind and message, the traceback from the user's code on,
    the last lines a crashed worker printed."""
    from cmworker.errors import user_frames

    text = f"{exc.kind}: {exc}"
    traceback_text = getattr(exc, "remote_traceback", "")
    if traceback_text:
        text += "\n" + user_frames(traceback_text).rstrip()
    output = getattr(exc, "output", None)
    if isinstance(output, str) and output.strip():
        text += "\nlast output:\n" + "\n".join(f"  {line}" for line in output.rstrip().splitlines())
    return text


def _payload(text: str | None) -> Any:
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    return json.loads(text)


def _print_result(result: Any) -> None:
    if isinstance(result, bytes):  # an answer that is not JSON: pass it through untouched
        sys.stdout.buffer.write(result)
        sys.stdout.flush()
        return
    print(json.dumps(result, indent=2 if sys.stdout.isatty() else None))
