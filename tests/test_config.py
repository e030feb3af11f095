"""Configuration: file lookup, precedence, validation messages, per-function limits, flags, the
``cmworker config`` command, the generated docs, and property tests of the validation rules.

Every ``load_config`` call here passes ``environ`` and ``cwd`` explicitly, so the tests never see the
environment or working directory they happen to run in.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import string
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmworker.app.registry import FunctionSpec
from cmworker.config import (
    INHERIT,
    Config,
    FunctionOverrides,
    add_config_flags,
    flags_from_args,
    load_config,
    load_config_from_args,
)
from cmworker.errors import ConfigError
from cmworker.limits import JobLimits
from cmworker.settings import SETTINGS

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
GiB = 2**30


def load(directory: Path, text: str | None = None, *, flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Write ``text`` (if given) to ``directory/cmworker.toml`` and load from that directory."""
    if text is not None:
        (directory / "cmworker.toml").write_text(text, encoding="utf-8")
    return load_config(flags=flags, environ=environ or {}, cwd=directory)


def error(directory: Path, text: str | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(directory, text, **kwargs)
    return str(caught.value)


def spec(name: str = "f", **limits: Any) -> Mapping[str, object]:
    return FunctionSpec(name=name, fn=lambda context, event: None, **limits).declared_limits()


def load_docs_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_config_docs.py"
    module_spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --- defaults and the file ------------------------------------------------------------------------

def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.app is None
    assert config.workers == (os.cpu_count() or 1)
    assert config.limits == JobLimits(timeout=3600.0, soft_timeout=None, memory_limit=None,
                                      max_result_size=32 * MiB)
    assert config.kill_grace == 0.05
    assert config.shutdown_grace == 25.0
    assert config.max_jobs_per_worker == 0
    assert config.worker_nice == 19
    assert (config.log_format, config.log_level) == ("auto", "INFO")
    assert config.functions == {}
    assert config.file is None
    assert config.source("workers") == "default (CPU count)"
    assert {config.source(s.key) for s in SETTINGS if s.key != "workers"} == {"default"}


def test_the_documented_example_loads_to_typed_values(tmp_path: Path) -> None:
    config = load(tmp_path, load_docs_generator().EXAMPLE)
    assert (config.app, config.workers) == ("app", 4)
    assert config.limits == JobLimits(timeout=300.0, soft_timeout=290.0, memory_limit=2 * GiB,
                                      max_result_size=32 * MiB)
    assert config.functions["heavy_simulation"] == FunctionOverrides(
        name="heavy_simulation", source=f"file {tmp_path / 'cmworker.toml'}", timeout=1800.0,
        soft_timeout=1740.0, memory_limit=8 * GiB)
    assert config.functions["lookup"].soft_timeout is None
    assert (config.log_format, config.log_level) == ("sls", "INFO")


def test_file_in_working_directory_is_found_and_named(tmp_path: Path) -> None:
    config = load(tmp_path, "workers = 3\n")
    assert config.workers == 3
    assert config.file == tmp_path / "cmworker.toml"
    assert config.file_origin == "found in the working directory"
    assert config.source("workers") == f"file {tmp_path / 'cmworker.toml'}"


def test_config_path_beats_env_beats_working_directory(tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_text("workers = 1\n")
    (tmp_path / "env.toml").write_text("workers = 2\n")
    (tmp_path / "flag.toml").write_text("workers = 3\n")
    environ = {"CMWORKER_CONFIG": "env.toml"}
    assert load_config(environ={}, cwd=tmp_path).workers == 1
    from_env = load_config(environ=environ, cwd=tmp_path)
    assert (from_env.workers, from_env.file_origin) == (2, "env CMWORKER_CONFIG")
    from_flag = load_config("flag.toml", environ=environ, cwd=tmp_path)
    assert (from_flag.workers, from_flag.file, from_flag.file_origin) == (3, tmp_path / "flag.toml",
                                                                          "flag --config")


def test_empty_environment_variables_count_as_unset(tmp_path: Path) -> None:
    environ = {"CMWORKER_CONFIG": "", "CMWORKER_WORKERS": " ", "MAX_CONCURRENT_TASKS": ""}
    config = load(tmp_path, environ=environ)
    assert config.file is None
    assert config.source("workers") == "default (CPU count)"


@pytest.mark.parametrize(("given", "level"), [("warning", "WARN"), ("Critical", "FATAL"), ("debug", "DEBUG")])
def test_log_levels_are_normalised_to_sls_names(tmp_path: Path, given: str, level: str) -> None:
    assert load(tmp_path, flags={"logging.level": given}).log_level == level


# --- MAX_CONCURRENT_TASKS ---------------------------------------------------------------------------

def test_max_concurrent_tasks_is_the_default_worker_count(tmp_path: Path) -> None:
    config = load(tmp_path, environ={"MAX_CONCURRENT_TASKS": "3"})
    assert config.workers == 3
    assert config.source("workers") == "env MAX_CONCURRENT_TASKS"


def test_file_and_flag_override_max_concurrent_tasks(tmp_path: Path) -> None:
    environ = {"MAX_CONCURRENT_TASKS": "3"}
    assert load(tmp_path, "workers = 5\n", environ=environ).workers == 5
    assert load(tmp_path, flags={"workers": "7"}, environ=environ).workers == 7


@pytest.mark.parametrize("value", ["0", "-2", "abc", "true", "2.5"])
def test_invalid_max_concurrent_tasks_is_named(tmp_path: Path, value: str) -> None:
    message = error(tmp_path, environ={"MAX_CONCURRENT_TASKS": value})
    assert "workers" in message
    assert value in message
    assert "env MAX_CONCURRENT_TASKS" in message


def test_invalid_max_concurrent_tasks_is_ignored_when_workers_is_set(tmp_path: Path) -> None:
    assert load(tmp_path, flags={"workers": 2}, environ={"MAX_CONCURRENT_TASKS": "abc"}).workers == 2


# --- precedence -------------------------------------------------------------------------------------

LAYERS = {"flag": ("3m", 180.0), "env": ("2m", 120.0), "file": ("1m", 60.0)}


@pytest.mark.parametrize("present", [combo for n in range(4) for combo in itertools.combinations(LAYERS, n)])
def test_flag_beats_env_beats_file_beats_default(tmp_path: Path, present: tuple[str, ...]) -> None:
    flags = {"limits.timeout": LAYERS["flag"][0]} if "flag" in present else {}
    environ = {"CMWORKER_TIMEOUT": LAYERS["env"][0]} if "env" in present else {}
    text = f'[limits]\ntimeout = "{LAYERS["file"][0]}"\n' if "file" in present else ""
    config = load(tmp_path, text, flags=flags, environ=environ)
    winner = next((layer for layer in LAYERS if layer in present), None)
    expected_source = {"flag": "flag --timeout", "env": "env CMWORKER_TIMEOUT",
                       "file": f"file {tmp_path / 'cmworker.toml'}", None: "default"}[winner]
    assert config.limits.timeout == (LAYERS[winner][1] if winner else 3600.0)
    assert config.source("limits.timeout") == expected_source


def test_flags_accept_typed_values_and_treat_none_as_not_given(tmp_path: Path) -> None:
    config = load(tmp_path, "workers = 5\n", flags={"workers": None, "limits.timeout": 90})
    assert (config.workers, config.limits.timeout) == (5, 90.0)
    assert config.source("limits.timeout") == "flag --timeout"


def test_a_flag_for_a_setting_without_one_is_named_by_key(tmp_path: Path) -> None:
    config = load(tmp_path, flags={"limits.kill_grace": "1s"})
    assert config.kill_grace == 1.0
    assert config.source("limits.kill_grace") == "flag --limits.kill_grace"


def test_unknown_flag_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    message = error(tmp_path, flags={"limits.timout": "1m"})
    assert "limits.timout" in message
    assert "limits.timeout" in message


def test_a_bad_file_value_is_an_error_even_under_a_flag(tmp_path: Path) -> None:
    message = error(tmp_path, "workers = 0\n", flags={"workers": "2"})
    assert "workers = 0" in message
    assert str(tmp_path / "cmworker.toml") in message


# --- errors name the key, the value and the source ---------------------------------------------------

FILE_ERRORS = [
    # (file text, key as shown, value as shown)
    ('wokers = 4\n', "wokers", "4"),
    ('timeout = "5m"\n', "timeout", '"5m"'),
    ('[limits]\ntimout = "5m"\n', "limits.timout", '"5m"'),
    ('[limit]\ntimeout = "5m"\n', "limit", '{ timeout = "5m" }'),
    ('limits = 5\n', "limits", "5"),
    ('[functions.f]\nworkers = 2\n', "functions.f.workers", "2"),
    ('[functions]\nf = "5m"\n', "functions.f", '"5m"'),
    ('workers = "4"\n', "workers", '"4"'),
    ('workers = true\n', "workers", "true"),
    ('workers = 4.5\n', "workers", "4.5"),
    ('workers = 0\n', "workers", "0"),
    ('workers = -3\n', "workers", "-3"),
    ('app = 5\n', "app", "5"),
    ('app = ""\n', "app", '""'),
    ('[limits]\ntimeout = true\n', "limits.timeout", "true"),
    ('[limits]\ntimeout = [1]\n', "limits.timeout", "[1]"),
    ('[limits]\ntimeout = "5x"\n', "limits.timeout", '"5x"'),
    ('[limits]\ntimeout = 0\n', "limits.timeout", "0"),
    ('[limits]\ntimeout = -1\n', "limits.timeout", "-1"),
    ('[limits]\ntimeout = nan\n', "limits.timeout", "nan"),
    ('[limits]\nsoft_timeout = "0s"\n', "limits.soft_timeout", '"0s"'),
    ('[limits]\nmemory_limit = "2 parsecs"\n', "limits.memory_limit", '"2 parsecs"'),
    ('[limits]\nmemory_limit = 512\n', "limits.memory_limit", "512"),
    ('[limits]\nkill_grace = "-1s"\n', "limits.kill_grace", '"-1s"'),
    ('[limits]\nmax_jobs_per_worker = -1\n', "limits.max_jobs_per_worker", "-1"),
    ('worker_nice = 20\n', "worker_nice", "20"),
    ('worker_nice = -5\n', "worker_nice", "-5"),
    ('worker_nice = "5"\n', "worker_nice", '"5"'),
    ('[limits]\nmax_result_size = 0\n', "limits.max_result_size", "0"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level", '"LOUD"'),
    ('[functions.f]\ntimeout = "soon"\n', "functions.f.timeout", '"soon"'),
    ('[functions."my.fn"]\nmemory_limit = 1\n', 'functions."my.fn".memory_limit', "1"),
]


@pytest.mark.parametrize(("text", "key", "value"), FILE_ERRORS)
def test_file_errors_name_key_value_and_file(tmp_path: Path, text: str, key: str, value: str) -> None:
    message = error(tmp_path, text)
    assert f"{key} = {value}" in message
    assert f"file {tmp_path / 'cmworker.toml'}" in message


@pytest.mark.parametrize(("text", "suggestion"), [
    ('[limits]\ntimout = "5m"\n', "did you mean limits.timeout?"),
    ('timeout = "5m"\n', "did you mean limits.timeout? (it belongs in the [limits] table)"),
    ('[limits]\nworkers = 2\n', "did you mean workers? (it belongs at the top level)"),
    ('[limit]\ntimeout = "5m"\n', "did you mean [limits]?"),
    ('[functions.f]\ntimeuot = "5m"\n', "did you mean 'timeout'?"),
])
def test_unknown_keys_suggest_the_closest_known_key(tmp_path: Path, text: str, suggestion: str) -> None:
    assert suggestion in error(tmp_path, text)


@pytest.mark.parametrize(("flags", "environ", "key", "value", "source"), [
    ({"workers": "0"}, {}, "workers", '"0"', "flag --workers"),
    ({"workers": "four"}, {}, "workers", '"four"', "flag --workers"),
    ({"limits.timeout": "5x"}, {}, "limits.timeout", '"5x"', "flag --timeout"),
    ({"limits.memory_limit": "-1"}, {}, "limits.memory_limit", '"-1"', "flag --memory-limit"),
    ({}, {"CMWORKER_WORKERS": "abc"}, "workers", '"abc"', "env CMWORKER_WORKERS"),
    ({}, {"CMWORKER_WORKER_NICE": "99"}, "worker_nice", '"99"', "env CMWORKER_WORKER_NICE"),
    ({}, {"CMWORKER_SOFT_TIMEOUT": "soon"}, "limits.soft_timeout", '"soon"', "env CMWORKER_SOFT_TIMEOUT"),
])
def test_flag_and_env_errors_name_key_value_and_source(tmp_path: Path, flags: dict[str, Any],
                                                        environ: dict[str, str], key: str, value: str,
                                                        source: str) -> None:
    message = error(tmp_path, flags=flags, environ=environ)
    assert f"{key} = {value} ({source})" in message


def test_missing_file_named_by_flag_or_env(tmp_path: Path) -> None:
    expected = f"{tmp_path / 'nope.toml'} (flag --config) does not exist"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("nope.toml", environ={}, cwd=tmp_path)
    message = error(tmp_path, environ={"CMWORKER_CONFIG": "gone.toml"})
    assert f"{tmp_path / 'gone.toml'} (env CMWORKER_CONFIG) does not exist" in message


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {tmp_path / 'dir.toml'}")):
        load_config("dir.toml", environ={}, cwd=tmp_path)


def test_invalid_toml_gives_file_line_and_column(tmp_path: Path) -> None:
    message = error(tmp_path, 'app = "app"\n[limits]\ntimeout = 5m\n')
    assert message.startswith(f"{tmp_path / 'cmworker.toml'}:3:12: invalid TOML")
    assert "timeout = 5m" in message            # the offending line
    assert 'write timeout = "5m"' in message    # and the usual fix


def test_unquoted_size_gets_a_hint_naming_its_key(tmp_path: Path) -> None:
    message = error(tmp_path, '[limits]\nmemory_limit = 2GiB  # per job\n')
    assert message.startswith(f"{tmp_path / 'cmworker.toml'}:2:")
    assert 'write memory_limit = "2GiB", not memory_limit = 2GiB' in message


def test_toml_error_without_position(tmp_path: Path) -> None:
    message = error(tmp_path, 'app = "unterminated')
    assert message.startswith(f"{tmp_path / 'cmworker.toml'}: invalid TOML")


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_bytes(b'app = "caf\xe9"\n')
    assert "not UTF-8" in error(tmp_path)


# --- soft_timeout < timeout -------------------------------------------------------------------------

def test_soft_timeout_must_be_below_timeout_in_limits(tmp_path: Path) -> None:
    message = error(tmp_path, '[limits]\ntimeout = "1m"\nsoft_timeout = "1m"\n')
    assert 'soft_timeout = "1m" (limits.soft_timeout, file' in message
    assert 'timeout = "1m" (limits.timeout, file' in message
    assert str(tmp_path / "cmworker.toml") in message


def test_soft_timeout_checked_across_layers(tmp_path: Path) -> None:
    message = error(tmp_path, '[limits]\nsoft_timeout = "4m50s"\n', flags={"limits.timeout": "4m"})
    assert 'soft_timeout = "4m50s" (limits.soft_timeout, file' in message
    assert 'timeout = "4m" (limits.timeout, flag --timeout)' in message


def test_soft_timeout_checked_after_per_function_overrides(tmp_path: Path) -> None:
    text = '[limits]\ntimeout = "5m"\nsoft_timeout = "4m50s"\n[functions.quick]\ntimeout = "10s"\n'
    message = error(tmp_path, text)
    assert message.startswith("function 'quick': ")
    assert 'timeout = "10s" (functions.quick.timeout, file' in message
    assert 'soft_timeout = "4m50s" (limits.soft_timeout, file' in message


def test_soft_timeout_may_be_set_without_a_hard_timeout(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\ntimeout = "none"\nsoft_timeout = "1m"\n')
    assert (config.limits.timeout, config.limits.soft_timeout) == (None, 60.0)


# --- per-function limits ----------------------------------------------------------------------------

def test_limits_for_an_undeclared_function_is_limits(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\ntimeout = "5m"\nmemory_limit = "1GiB"\n')
    assert config.limits_for("anything") == config.limits


def test_decorator_beats_limits(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\ntimeout = "5m"\nmemory_limit = "1GiB"\n')
    limits = config.limits_for("f", spec(timeout=30.0))
    assert limits == JobLimits(timeout=30.0, soft_timeout=None, memory_limit=GiB, max_result_size=32 * MiB)


def test_function_table_beats_decorator_beats_limits(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\ntimeout = "5m"\nmemory_limit = "1GiB"\nmax_result_size = "1MiB"\n'
                            '[functions.f]\ntimeout = "20m"\n')
    limits = config.limits_for("f", spec(timeout=30.0, memory_limit=2 * GiB))
    assert limits == JobLimits(timeout=1200.0, soft_timeout=None, memory_limit=2 * GiB, max_result_size=MiB)


def test_declared_limits_may_come_as_a_mapping(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\ntimeout = "5m"\n[functions.f]\nmemory_limit = "1GiB"\n')
    declared = {"timeout": 30.0, "soft_timeout": None, "memory_limit": 2 * GiB, "streaming": False}
    assert config.limits_for("f", declared) == JobLimits(timeout=30.0, memory_limit=GiB)


def test_function_table_can_lift_a_declared_limit_with_none(tmp_path: Path) -> None:
    config = load(tmp_path, '[functions.f]\nmemory_limit = "none"\ntimeout = "none"\n')
    limits = config.limits_for("f", spec(memory_limit=GiB, timeout=10.0))
    assert (limits.memory_limit, limits.timeout) == (None, None)


def test_flags_override_limits_but_not_declarations_or_function_tables(tmp_path: Path) -> None:
    config = load(tmp_path, '[functions.g]\ntimeout = "20m"\n', flags={"limits.timeout": "90"})
    assert config.limits.timeout == 90.0
    assert config.limits_for("plain").timeout == 90.0
    assert config.limits_for("f", spec(timeout=30.0)).timeout == 30.0
    assert config.limits_for("g", spec("g", timeout=30.0)).timeout == 1200.0


def test_limits_for_checks_soft_below_hard_with_the_declaration(tmp_path: Path) -> None:
    config = load(tmp_path, '[limits]\nsoft_timeout = "4m50s"\n')
    with pytest.raises(ConfigError) as caught:
        config.limits_for("quick", spec("quick", timeout=10.0))
    message = str(caught.value)
    assert message.startswith("function 'quick': ")
    assert 'timeout = "10s" (declared by @cmworker.function on \'quick\')' in message
    assert f'soft_timeout = "4m50s" (limits.soft_timeout, file {tmp_path / "cmworker.toml"})' in message


def test_a_config_built_in_code_resolves_limits() -> None:
    config = Config(app="app", workers=1, shutdown_grace=1.0, poll_timeout=30.0,
                    limits=JobLimits(timeout=60.0, soft_timeout=50.0), kill_grace=0.0, max_jobs_per_worker=0,
                    log_format="auto", log_level="INFO", stats_interval=None)
    assert config.limits_for("f", spec(memory_limit=GiB)) == JobLimits(60.0, 50.0, GiB)
    assert config.source("limits.timeout") == "set in code"
    with pytest.raises(ConfigError, match=r"timeout = \"30s\" \(declared by @cmworker.function on 'f'\)"):
        config.limits_for("f", spec(timeout=30.0))
    assert 'timeout = "1m"' in config.to_toml()


def test_per_function_provenance(tmp_path: Path) -> None:
    config = load(tmp_path, '[functions.f]\ntimeout = "1m"\n')
    assert config.source("functions.f.timeout") == f"file {tmp_path / 'cmworker.toml'}"
    assert config.functions["f"].memory_limit is INHERIT
    with pytest.raises(KeyError):
        config.source("functions.f.memory_limit")


def test_check_functions_names_a_table_for_no_registered_function(tmp_path: Path) -> None:
    config = load(tmp_path, '[functions.heavy_simulaton]\ntimeout = "1m"\n')
    config.check_functions(["heavy_simulaton"])
    with pytest.raises(ConfigError, match=r"heavy_simulaton.*did you mean 'heavy_simulation'"):
        config.check_functions(["heavy_simulation", "lookup"])


def test_require_app(tmp_path: Path) -> None:
    assert load(tmp_path, 'app = " app.py "\n').require_app() == "app.py"
    with pytest.raises(ConfigError, match="--app"):
        load(tmp_path, "").require_app()


# --- flags ------------------------------------------------------------------------------------------

def test_flags_from_args_returns_only_flags_given(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--workers", "3", "--timeout", "90", "--memory-limit", "1000000000"])
    assert flags_from_args(args) == {"workers": "3", "limits.timeout": "90",
                                     "limits.memory_limit": "1000000000"}
    assert args.config is None
    assert flags_from_args(parser.parse_args([])) == {}


def test_add_config_flags_adds_only_the_named_settings() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, names=["workers"])
    assert flags_from_args(parser.parse_args(["--workers", "2"])) == {"workers": "2"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--timeout", "1"])
    with pytest.raises(ValueError, match="kill_grace"):
        add_config_flags(argparse.ArgumentParser(), names=["limits.kill_grace"])


def test_command_flags_do_not_collide_with_the_commands_own_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workers")  # a positional that happens to share a setting's name
    add_config_flags(parser)
    args = parser.parse_args(["positional", "--workers", "4"])
    assert args.workers == "positional"
    assert flags_from_args(args) == {"workers": "4"}


def test_load_config_from_args(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("workers = 2\n[limits]\ntimeout = \"1m\"\n")
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--config", str(tmp_path / "c.toml"), "--workers", "5"])
    config = load_config_from_args(args, environ={})
    assert (config.workers, config.limits.timeout) == (5, 60.0)


# --- the printed configuration ----------------------------------------------------------------------

def test_printed_configuration_is_toml_that_loads_back_the_same(tmp_path: Path) -> None:
    flags = {"workers": "7", "limits.kill_grace": "2s"}
    original = load(tmp_path, load_docs_generator().EXAMPLE, flags=flags)
    (tmp_path / "printed.toml").write_text(original.to_toml())
    reloaded = load_config("printed.toml", environ={}, cwd=tmp_path)
    assert reloaded.limits == original.limits
    for setting in SETTINGS:
        assert setting.value_in(reloaded) == setting.value_in(original), setting.key
    assert {name: o.items() for name, o in reloaded.functions.items()} == \
        {name: o.items() for name, o in original.functions.items()}


@pytest.fixture(scope="module")
def cmworker_command() -> list[str]:
    """The ``cmworker`` command line for a subprocess: ``python -m cmworker`` when it starts.

    cli.build_parser imports every command's module, so while another command's module is missing or
    broken (they are being written alongside this one) the whole CLI cannot start. Then the same
    ``cli.main`` runs with only the ``config`` command registered, and a warning says so.
    """
    full = [sys.executable, "-m", "cmworker"]
    probe = subprocess.run([*full, "--help"], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode == 0:
        return full
    last_line = (probe.stderr.strip().splitlines() or ["?"])[-1]
    warnings.warn(f"`python -m cmworker` does not start ({last_line}); testing `config` alone", stacklevel=1)
    bootstrap = ("import sys; from cmworker import cli; "
                 "cli.COMMANDS = {'config': cli.COMMANDS['config']}; sys.exit(cli.main())")
    return [sys.executable, "-c", bootstrap]


def run_cmworker(command: list[str], cwd: Path, *args: str,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CMWORKER_") and k != "MAX_CONCURRENT_TASKS"}
    return subprocess.run([*command, *args], cwd=cwd, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_config_command_prints_values_and_sources(cmworker_command: list[str], tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_text(load_docs_generator().EXAMPLE)
    done = run_cmworker(cmworker_command, tmp_path, "config", "--workers", "6", "--timeout", "10m",
                        env={"CMWORKER_MEMORY_LIMIT": "3GiB"})
    assert done.returncode == 0, done.stderr
    lines = {re.sub(r"\s+#", "  #", line) for line in done.stdout.splitlines()}
    file_source = f"file {tmp_path / 'cmworker.toml'}"
    assert "workers = 6  # flag --workers" in lines
    assert f'app = "app"  # {file_source}' in lines
    assert 'timeout = "10m"  # flag --timeout' in lines
    assert 'memory_limit = "3GiB"  # env CMWORKER_MEMORY_LIMIT' in lines
    assert 'kill_grace = "50ms"  # default' in lines
    assert "[functions.heavy_simulation]" in lines
    assert f'memory_limit = "8GiB"  # {file_source}' in lines


def test_config_command_reads_the_file_named_by_cmworker_config(cmworker_command: list[str],
                                                                tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text("workers = 9\n")
    environ = {"CMWORKER_CONFIG": "other.toml", "MAX_CONCURRENT_TASKS": "2"}
    done = run_cmworker(cmworker_command, tmp_path, "config", env=environ)
    assert done.returncode == 0, done.stderr
    assert re.search(rf"^workers = 9 +# file {re.escape(str(tmp_path / 'other.toml'))}$", done.stdout, re.M)
    done = run_cmworker(cmworker_command, tmp_path, "config", env={"MAX_CONCURRENT_TASKS": "2"})
    assert re.search(r"^workers = 2 +# env MAX_CONCURRENT_TASKS$", done.stdout, re.M)


def test_config_command_exits_2_with_the_error_on_stderr(cmworker_command: list[str], tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_text('[limits]\ntimout = "5m"\n')
    done = run_cmworker(cmworker_command, tmp_path, "config")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "limits.timout" in done.stderr
    assert str(tmp_path / "cmworker.toml") in done.stderr
    done = run_cmworker(cmworker_command, tmp_path, "config", "--config", "missing.toml")
    assert done.returncode == 2
    assert "missing.toml (flag --config) does not exist" in done.stderr


# --- the declaration itself -------------------------------------------------------------------------

def test_declarations_are_consistent() -> None:
    keys = [s.key for s in SETTINGS]
    flags = [s.flag for s in SETTINGS if s.flag]
    envs = [s.env for s in SETTINGS if s.env]
    assert len(set(keys)) == len(keys)
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)
    assert all(s.help.strip() and s.type for s in SETTINGS)
    per_function = [s.name for s in SETTINGS if s.per_function]
    assert per_function == [f.name for f in dataclasses.fields(FunctionOverrides)][2:]
    assert set(per_function) <= {f.name for f in dataclasses.fields(JobLimits)}


def test_every_setting_reads_its_value_from_config(tmp_path: Path) -> None:
    config = load(tmp_path, load_docs_generator().EXAMPLE)
    values = {s.key: s.value_in(config) for s in SETTINGS}
    assert values["limits.timeout"] == 300.0
    assert values["limits.kill_grace"] == 0.05
    assert values["logging.format"] == "sls"


def test_docs_are_up_to_date() -> None:
    generated = load_docs_generator().render()
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == generated, "docs/configuration.md is stale: run scripts/gen_config_docs.py"


def test_docs_mention_every_setting() -> None:
    generated = load_docs_generator().render()
    for setting in SETTINGS:
        assert f"### `{setting.key}`" in generated
        assert setting.help in generated


# --- properties -------------------------------------------------------------------------------------

# Durations as a file would hold them: whole milliseconds, so the TOML float reads back exactly.
durations = st.integers(min_value=1, max_value=10**9).map(lambda ms: ms / 1000)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for property tests (hypothesis reruns a test, but not a function-scoped fixture)."""
    return tmp_path_factory.mktemp("properties")


@given(soft=durations, hard=durations)
def test_soft_and_hard_timeouts_load_iff_soft_is_below_hard(scratch: Path, soft: float, hard: float) -> None:
    text = f"[limits]\ntimeout = {hard!r}\nsoft_timeout = {soft!r}\n"
    flags = {"limits.timeout": str(hard), "limits.soft_timeout": str(soft)}
    if soft < hard:
        assert load(scratch, text).limits == JobLimits(timeout=hard, soft_timeout=soft)
        assert load(scratch, "", flags=flags).limits == JobLimits(timeout=hard, soft_timeout=soft)
    else:
        assert "soft_timeout" in error(scratch, text)
        assert "soft_timeout" in error(scratch, "", flags=flags)


@given(soft=durations, hard=durations, own=durations)
def test_function_timeouts_load_iff_inherited_soft_is_below_them(scratch: Path, soft: float, hard: float,
                                                                 own: float) -> None:
    text = f"[limits]\ntimeout = {hard!r}\nsoft_timeout = {soft!r}\n[functions.f]\ntimeout = {own!r}\n"
    if soft < hard and soft < own:
        assert load(scratch, text).limits_for("f").timeout == own
    else:
        assert "soft_timeout" in error(scratch, text)


bare_keys = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
any_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(key=st.one_of(bare_keys, any_keys), table=st.sampled_from(["", "[limits]\n", "[logging]\n",
                                                                   "[functions.f]\n"]))
def test_unknown_keys_are_always_rejected_and_named(scratch: Path, key: str, table: str) -> None:
    section = table.strip("[]\n")
    known = {s.key for s in SETTINGS} | {"limits", "logging", "functions"}
    known_here = {s.name for s in SETTINGS if s.per_function} if section.startswith("functions") else \
        {k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section}
    if key in known_here:
        return
    # JSON's string escapes are TOML's, except that TOML also wants DEL escaped.
    quoted = json.dumps(key, ensure_ascii=False).replace("\x7f", "\\u007f")
    message = error(scratch, f"{table}{quoted} = 1\n")
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)
    assert shown in message
    assert "= 1 (file" in message


@given(st.integers(min_value=-10**6, max_value=10**6))
def test_workers_accepted_iff_positive(scratch: Path, workers: int) -> None:
    for text, flags, environ in [(f"workers = {workers}\n", {}, {}), ("", {"workers": str(workers)}, {}),
                                 ("", {}, {"CMWORKER_WORKERS": str(workers)}),
                                 ("", {}, {"MAX_CONCURRENT_TASKS": str(workers)})]:
        if workers >= 1:
            assert load(scratch, text, flags=flags, environ=environ).workers == workers
        else:
            assert "must be 1 or more" in error(scratch, text, flags=flags, environ=environ)


@given(st.one_of(st.booleans(), st.floats(), st.text(string.printable, max_size=5)))
def test_workers_of_another_type_are_rejected(scratch: Path, value: object) -> None:
    # TOML spells these like Python's str(), lowered: true, 1.5, 1e+16, nan, inf; strings like JSON.
    literal = json.dumps(value) if isinstance(value, str) else str(value).lower()
    assert "expected a whole number" in error(scratch, f"workers = {literal}\n")


valid_limits = st.fixed_dictionaries({
    "timeout": st.one_of(st.none(), durations),
    "memory_limit": st.one_of(st.none(), st.integers(min_value=MiB, max_value=2**50)),
    "max_result_size": st.integers(min_value=1, max_value=2**40),
    "kill_grace": st.integers(min_value=0, max_value=10**6).map(lambda ms: ms / 1000),
    "max_jobs_per_worker": st.integers(min_value=0, max_value=10**6),
})


@given(limits=valid_limits, workers=st.integers(min_value=1, max_value=512))
def test_valid_files_load_and_print_back_identically(scratch: Path, limits: dict[str, Any],
                                                     workers: int) -> None:
    def toml(value: object) -> str:
        return '"none"' if value is None else repr(value)

    text = f"workers = {workers}\n[limits]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in limits.items())
    config = load(scratch, text)
    assert config.workers == workers
    assert config.limits == JobLimits(timeout=limits["timeout"], memory_limit=limits["memory_limit"],
                                      max_result_size=limits["max_result_size"])
    assert config.kill_grace == limits["kill_grace"]
    assert config.max_jobs_per_worker == limits["max_jobs_per_worker"]
    reloaded = load(scratch, config.to_toml())
    assert [s.value_in(reloaded) for s in SETTINGS] == [s.value_in(config) for s in SETTINGS]


def test_worker_nice_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert load(tmp_path, "worker_nice = 0\n").worker_nice == 0
    config = load(tmp_path, "worker_nice = 0\n", environ={"CMWORKER_WORKER_NICE": "5"})
    assert (config.worker_nice, config.source("worker_nice")) == (5, "env CMWORKER_WORKER_NICE")
