"""``cmworker config``: print the effective configuration and where each value came from.

With an app configured, its functions' limits follow, the ones set in the decorator included: to learn
them the app is imported here, in this short-lived process, as ``cmworker schema`` does (the server's
parent never imports it). A ``[functions.NAME]`` table that names no function of the app is warned of.
"""

from __future__ import annotations

import argparse
import sys

from cmworker.config import Config, add_config_flags, load_config_from_args
from cmworker.errors import ConfigError


def configure_config(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)


def run_config(args: argparse.Namespace) -> int:
    """Print the effective configuration with each value's source; exit 2 when it is invalid."""
    try:
        config = load_config_from_args(args)
    except ConfigError as exc:
        print(f"cmworker config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(config.to_toml())
    if config.app:
        _print_function_limits(config)
    return 0


def _print_function_limits(config: Config) -> None:
    from cmworker.app.registry import load_app
    from cmworker.app.schema import UnsupportedType
    from cmworker.errors import AppLoadError

    try:
        functions = load_app(str(config.app))
    except (AppLoadError, UnsupportedType) as exc:
        print(f"cmworker config: the app's own limits are not shown: {exc}", file=sys.stderr)
        return
    rows: list[tuple[str, str]] = []
    for name in sorted(functions):
        rows.append((f"# [functions.{name}]", ""))
        try:
            rows += [(f"#   {line}", origin) for line, origin in
                     config.limit_lines(name, functions[name].declared_limits())]
        except ConfigError as exc:
            rows.append((f"#   invalid: {exc}", ""))
    width = max([len(line) for line, origin in rows if origin] or [0]) + 2
    sys.stdout.write(f"\n# limits of each function of {config.app}, as served: [functions.NAME] > "
                     "@cmworker.function(...) > [limits]\n")
    sys.stdout.write("".join(f"{line.ljust(width)}# {origin}\n" if origin else f"{line}\n" for line, origin in rows))
    try:
        config.check_functions(functions)
    except ConfigError as exc:
        print(f"cmworker config: warning: {exc}", file=sys.stderr)
