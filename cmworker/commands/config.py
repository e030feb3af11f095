"""``cmworker config``: print the effective configuration and where each value came from."""

from __future__ import annotations

import argparse
import sys

from cmworker.config import add_config_flags, load_config_from_args
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
    return 0
