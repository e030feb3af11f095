"""``cmworker health``: the container's readiness and liveness probe (docs/health.md).

Reads the status file that ``cmworker run`` keeps (``cmworker.replica.health``) and prints one line:
exit 0 when the replica is serving (with ``--live``: also while it starts or drains), 1 when it is not
(the line says why), 2 when the configuration cannot be read or turns the status file off. It imports
neither the app nor an HTTP client and sends no request, so a probe every few seconds costs one short
Python start-up.
"""

from __future__ import annotations

import argparse
import sys

from cmworker.config import load_config
from cmworker.errors import CmworkerError
from cmworker.replica.health import DEFAULT_MAX_AGE, judge, read_status, status_path
from cmworker.settings import HEALTH_FILE
from cmworker.units import format_duration, parse_duration


def configure_health(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="the cmworker.toml that `cmworker run` uses, if it is "
                        "not ./cmworker.toml or $CMWORKER_CONFIG (only its [health] table is read)")
    parser.add_argument("--max-age", type=parse_duration, default=DEFAULT_MAX_AGE, metavar="DURATION",
                        help="fail when the status is older than this: the parent is stuck "
                             f"(default {format_duration(DEFAULT_MAX_AGE)})")
    parser.add_argument("--live", action="store_true",
                        help="judge for a liveness probe: a replica still starting or draining after SIGTERM "
                             "is alive (restarting it would lose that work), only a dead, stuck or unhealthy "
                             "one fails")


def run_health(args: argparse.Namespace) -> int:
    try:
        path = status_path(load_config(args.config).health_file)
    except CmworkerError as exc:
        print(f"unhealthy: cannot read the configuration: {exc}")
        return 2
    if path is None:
        print(f"unhealthy: {HEALTH_FILE.key} is \"off\", so cmworker run keeps no status to check")
        return 2
    try:
        status = read_status(path)
    except FileNotFoundError:
        print(f"unhealthy: no status at {path}: cmworker run has not started yet, or it writes elsewhere "
              f"(${HEALTH_FILE.env} and {HEALTH_FILE.key} must be the same for both)")
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot read the status at {path}: {exc}")
        return 1
    healthy, line = judge(status, max_age=args.max_age, live=args.live)
    print(line if healthy else f"unhealthy: {line}")
    sys.stdout.flush()
    return 0 if healthy else 1
