"""The ``cmworker`` command line: a table of subcommands, each living in a module of ``cmworker.commands``.

A subcommand's module exposes ``configure_<name>(parser)`` and ``run_<name>(args) -> int``. Only the
module of the command being run is imported, so ``cmworker --version`` and ``--help`` stay instant and
one command's dependencies never break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cmworker._version import __version__

# name -> (module, help). The module provides configure_<name>(parser) and run_<name>(args).
_RUN_HELP = "serve an app's functions to the compute-module runtime (the container entrypoint)"
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("cmworker.commands.run", _RUN_HELP),
    "dev": ("cmworker.commands.run", "serve an app on the embedded runtime, for local development"),
    "pipeline": ("cmworker.commands.pipeline", "run an app's @cmworker.pipeline loop, supervised (pipeline mode)"),
    "config": ("cmworker.commands.config", "print the effective configuration and where each value came from"),
    "runtime": ("cmworker.commands.runtime", "run the embedded compute-module runtime on loopback"),
    "call": ("cmworker.commands.runtime", "send a query to the running embedded runtime and print the answer"),
    "schema": ("cmworker.commands.schema", "print the function schemas inferred from an app's type hints"),
    "health": ("cmworker.commands.health", "exit 0 if the replica served here is healthy (a container probe)"),
    "init": ("cmworker.commands.init", "create a compute-module project: app, config, tests, Dockerfile"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to configure its subparser."""
    parser = argparse.ArgumentParser(prog="cmworker", description="Run Python functions in a Foundry "
                                     "compute module, one crash-isolated worker per job.")
    parser.add_argument("--version", action="version", version=f"cmworker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            getattr(importlib.import_module(module_name), f"configure_{name}")(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    code: int = getattr(module, f"run_{args.command}")(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
