"""The effective configuration, ``Config``: read from flags, environment and file, and shown again.

What each setting is (key, type, validator, default, help) is declared once, in ``cmworker.settings``.
This module applies that declaration: it finds and reads ``cmworker.toml``, layers it under environment
variables and flags, builds ``Config``, renders it back as TOML for ``cmworker config``, and generates
the command-line flags (``add_config_flags``).

How a value gets into ``Config``::

    --timeout 90          flag     ─┐
    CMWORKER_TIMEOUT=90   env      ─┤  the highest layer that has the key wins; every value
    [limits] timeout=...  file     ─┤  given in any layer goes through the setting's validator,
    "1h"                  default  ─┘  so a typo is an error even where a flag overrides it
                                       │
                                       ▼
    Config(limits=JobLimits(timeout=90.0, ...), sources={"limits.timeout": "flag --timeout"}, ...)

Per-function limits: ``[functions.NAME]`` tables override ``timeout``, ``soft_timeout``,
``memory_limit``, ``soft_memory_limit``, ``max_worker_memory`` and ``max_result_size`` for one function.
``Config.limits_for`` resolves them:
``[functions.NAME]`` > the function's ``@cmworker.function(...)`` declaration > ``[limits]``. Flags and
environment variables set ``[limits]`` only, so ``--timeout`` never overrides a limit that a function
declared or that its own table sets. Every ``ConfigError`` names the key, the value and where it came
from (``file /path/cmworker.toml``, ``flag --workers``, ``env MAX_CONCURRENT_TASKS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

from cmworker.errors import ConfigError
from cmworker.limits import JobLimits
from cmworker.settings import (
    _BY_KEY,
    _PER_FUNCTION,
    _SECTIONS,
    APP,
    CGROUPS,
    FUNCTIONS_TABLE,
    HEALTH_FILE,
    HEALTH_UNREACHABLE_AFTER,
    KILL_GRACE,
    LOG_FORMAT,
    LOG_LEVEL,
    LOGGER_LEVELS,
    MAX_JOBS_PER_WORKER,
    MAX_RESULT_SIZE,
    MAX_WORKER_MEMORY,
    MEMORY_LIMIT,
    POLL_TIMEOUT,
    SETTINGS,
    SHUTDOWN_GRACE,
    SOFT_MEMORY_LIMIT,
    SOFT_TIMEOUT,
    STARTUP_WAIT,
    STATS_INTERVAL,
    TIMEOUT,
    WORKER_NICE,
    WORKERS,
    Setting,
    _literal,
    _show_duration,
    _toml_key,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found]  # not installed beside a 3.11+ tomllib

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FILE",
    "INHERIT",
    "Config",
    "FunctionOverrides",
    "Inherit",
    "add_config_flags",
    "flags_from_args",
    "load_config",
    "load_config_from_args",
]

T = TypeVar("T")

CONFIG_ENV = "CMWORKER_CONFIG"      # names the configuration file
DEFAULT_FILE = "cmworker.toml"      # read from the working directory when nothing names a file
SET_IN_CODE = "set in code"  # the source of a value in a Config constructed directly


# ---------------------------------------------------------------------------------------------------
# The result.
# ---------------------------------------------------------------------------------------------------

class Inherit(enum.Enum):
    """A per-function limit that its ``[functions.NAME]`` table does not set."""

    INHERIT = "inherit"


INHERIT = Inherit.INHERIT


@dataclass(frozen=True)
class FunctionOverrides:
    """One ``[functions.NAME]`` table. A field left at ``INHERIT`` comes from the decorator or ``[limits]``;
    ``None`` means the table set it to "none" (unlimited)."""

    name: str
    source: str                                    # "file /app/cmworker.toml"
    timeout: float | Inherit | None = INHERIT
    soft_timeout: float | Inherit | None = INHERIT
    memory_limit: int | Inherit | None = INHERIT
    soft_memory_limit: int | Inherit | None = INHERIT
    max_worker_memory: int | Inherit | None = INHERIT
    max_result_size: int | Inherit = INHERIT

    def items(self) -> list[tuple[str, object]]:
        """The limits this table sets, as (name, value), in declaration order."""
        return [(key, getattr(self, key)) for key in _PER_FUNCTION if getattr(self, key) is not INHERIT]


@dataclass(frozen=True)
class Config:
    """The effective configuration: typed values, and where each one came from."""

    app: str | None                      # None: not configured (`cmworker run` then requires it)
    workers: int
    shutdown_grace: float                # seconds running jobs get after SIGTERM
    poll_timeout: float                  # seconds one GET job may take before it is retried
    limits: JobLimits                    # [limits], after flags and environment
    kill_grace: float                    # seconds between SIGTERM and SIGKILL
    max_jobs_per_worker: int             # 0 = never recycle
    log_format: str                      # "auto", "sls" or "console"
    log_level: str                       # an SLS level name
    stats_interval: float | None         # seconds between `stats` lines; None: never
    # Defaults for a Config built in code, from the declarations.
    logger_levels: tuple[tuple[str, str], ...] = LOGGER_LEVELS.fixed_default  # (logger name, SLS level)
    worker_nice: int = WORKER_NICE.fixed_default  # added to the parent's nice value in each worker
    cgroups: str = CGROUPS.fixed_default  # "auto" or "off": how a job's processes are found
    health_file: str = HEALTH_FILE.fixed_default  # "auto", "off" or a path: cmworker run's status file
    health_unreachable_after: float = HEALTH_UNREACHABLE_AFTER.fixed_default  # seconds of failing GETs
    startup_wait: float = STARTUP_WAIT.fixed_default  # seconds to wait for each file the platform writes late
    functions: Mapping[str, FunctionOverrides] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # key -> source
    file: Path | None = None             # the file read, if any
    file_origin: str | None = None       # how it was found: "flag --config", "env CMWORKER_CONFIG", ...

    def source(self, key: str) -> str:
        """Where the value of ``key`` came from ("functions.NAME.timeout" works too)."""
        if key in _BY_KEY:
            # A Config built by hand (in a test, say) has no sources.
            return self.sources.get(key, SET_IN_CODE)
        section, _, name = key.rpartition(".")
        table = section.partition(".")[2]
        if section.startswith(f"{FUNCTIONS_TABLE}.") and table in self.functions:
            overrides = self.functions[table]
            if getattr(overrides, name, INHERIT) is not INHERIT:
                return overrides.source
        raise KeyError(key)

    def require_app(self) -> str:
        """The app, or a ``ConfigError`` saying every way to set it."""
        if self.app is None:
            raise ConfigError(f"no app to serve: name it on the command line, with {APP.flag}, with "
                              f"${APP.env}, or as `app = \"...\"` in {DEFAULT_FILE}")
        return self.app

    def limits_for(self, name: str, declared: Mapping[str, object] | None = None) -> JobLimits:
        """The limits for function ``name``.

        Precedence: its ``[functions.NAME]`` table > ``declared`` (its decorator) > ``[limits]``; flags
        and environment variables reach it only through ``[limits]``. ``declared`` maps what the function
        declared, ``timeout``/``soft_timeout``/``memory_limit`` (``None``: undeclared), as the parent
        process gets it from the template's JSON; keys that are not limits are ignored. Raises
        ``ConfigError`` naming the function when the result has ``soft_timeout >= timeout``.
        """
        limits, origins = _layer_function_limits(self, name, declared)
        _check_soft_below_hard(limits, origins, f"function {name!r}: ")
        return limits

    def limit_lines(self, name: str, declared: Mapping[str, object] | None) -> list[tuple[str, str]]:
        """Function ``name``'s limits as ``(TOML line, where it came from)``, its decorator's included."""
        limits, origins = _layer_function_limits(self, name, declared)
        return [(f"{limit} = {setting.show(getattr(limits, limit))}", origins[limit])
                for limit, setting in _PER_FUNCTION.items()]

    def check_functions(self, registered: Iterable[str]) -> None:
        """``ConfigError`` when a ``[functions.NAME]`` table names no registered function (likely a typo)."""
        known = list(registered)
        problems = [f"[{FUNCTIONS_TABLE}.{_toml_key(name)}] ({overrides.source}): the app registers no "
                    f"function {name!r}{_suggest(name, known)}"
                    for name, overrides in self.functions.items() if name not in known]
        if problems:  # every one of them, not just the first: each is a typo to fix
            raise ConfigError("; ".join(problems))

    def to_toml(self) -> str:
        """The configuration as TOML, each value followed by a comment saying where it came from."""
        return _render(self)


# ---------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Given:
    """One layer's value for one setting, before validation."""

    value: object
    source: str
    is_text: bool  # flags and environment variables are text; TOML values are typed


def load_config(path: str | os.PathLike[str] | None = None, *, flags: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration: ``flags`` > ``environ`` > the file > defaults.

    The file is ``path`` (``--config``), else ``$CMWORKER_CONFIG``, else ``./cmworker.toml`` if it exists
    (relative paths are taken from ``cwd``), else none. ``flags`` maps setting keys ("workers",
    "limits.timeout") to values; strings are parsed as on the command line, and ``None`` means not given.
    Raises ``ConfigError`` naming the key, the value and its source.
    """
    environ = os.environ if environ is None else environ
    base = Path.cwd() if cwd is None else Path(cwd)
    located = _locate_file(path, environ, base)
    document: dict[str, Any] = {}
    file_source = ""
    if located is not None:
        file_source = f"file {located[0]}"
        document = _read_toml(*located)
    file_values, tables = _split_document(document, file_source)
    flags = flags or {}
    _check_flag_keys(flags)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        layers = _layers(setting, flags, environ, file_values, file_source)
        values[setting.key], sources[setting.key] = _resolve(setting, layers, environ)
    config = _build(values, sources, tables, file_source, located)
    _check_all_limits(config)
    return config


def load_config_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> Config:
    """``load_config`` for a command whose parser went through ``add_config_flags``."""
    return load_config(getattr(args, "config", None), flags=flags_from_args(args), environ=environ)


def _locate_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str],
                 cwd: Path) -> tuple[Path, str] | None:
    if path is not None:
        return Path(os.path.normpath(cwd / path)), "flag --config"
    named = environ.get(CONFIG_ENV, "").strip()
    if named:
        return Path(os.path.normpath(cwd / named)), f"env {CONFIG_ENV}"
    default = cwd / DEFAULT_FILE
    if default.is_file():
        return default, "found in the working directory"
    return None


def _read_toml(path: Path, origin: str) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} ({origin}) does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({origin}): {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); "
                          "TOML files are UTF-8") from None
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error_message(path, text, exc)) from None
    return document


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# `timeout = 5m`: TOML reads the 5 and chokes on the m. The commonest mistake, so it gets a hint.
_UNQUOTED_UNIT = re.compile(r"\s*([\w.-]+)\s*=\s*([\d.]+\s*[A-Za-z]+)\s*(#.*)?")


def _toml_error_message(path: Path, text: str, exc: Exception) -> str:
    """``path:line:col: invalid TOML: ...``, the offending line, and a hint for the usual mistake."""
    message = str(exc)
    position = _TOML_POSITION.search(message)
    if position is None:
        return f"{path}: invalid TOML: {message}"
    line, column = int(position.group(1)), int(position.group(2))
    source_line = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    hint = ""
    unquoted = _UNQUOTED_UNIT.fullmatch(source_line)
    if unquoted:
        key, value = unquoted.group(1), unquoted.group(2)
        hint = f'\n  durations and sizes are strings in TOML: write {key} = "{value}", not {key} = {value}'
    return (f"{path}:{line}:{column}: invalid TOML: {message[:position.start()]}\n"
            f"  {source_line}\n  {' ' * (column - 1)}^{hint}")


def _split_document(document: Mapping[str, Any], source: str) -> tuple[dict[str, object], dict[str, Any]]:
    """The file's settings by dotted key, and its [functions] table; unknown keys are errors."""
    values: dict[str, object] = {}
    functions: dict[str, Any] = {}
    for name, value in document.items():
        if name == FUNCTIONS_TABLE:
            functions = _expect_table(name, value, source)
        elif name in _SECTIONS:
            for inner, inner_value in _expect_table(name, value, source).items():
                values[_known_key(name, inner, inner_value, source)] = inner_value
        else:
            values[_known_key("", name, value, source)] = value
    return values, functions


def _expect_table(key: str, value: object, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} = {_literal(value)} ({source}): must be a table, written [{key}]")
    return value


def _known_key(section: str, name: str, value: object, source: str) -> str:
    """The dotted key of ``name`` in ``section``, or a ``ConfigError`` suggesting what was meant."""
    key = f"{section}.{name}" if section else name
    if key in _BY_KEY:
        return key
    here = [s.key for s in SETTINGS if s.section == section]
    if not section:
        here += [f"[{table}]" for table in (*_SECTIONS, FUNCTIONS_TABLE)]
    shown = f"{section}.{_toml_key(name)}" if section else _toml_key(name)
    raise ConfigError(f"{shown} = {_literal(value)} ({source}): unknown key{_suggest_key(name, here)}")


def _suggest_key(name: str, here: list[str]) -> str:
    """"did you mean ...?": a setting of exactly that name in another table first (a key put in the
    wrong table is the likeliest mistake), then a close key of this table, then one of another table."""
    leaves = {key.rpartition(".")[2].strip("[]"): key for key in here}
    misplaced = next((s for s in SETTINGS if s.name == name and s.key not in here), None)
    close = [] if misplaced else difflib.get_close_matches(name, list(leaves), n=1)
    if close:
        return f"; did you mean {leaves[close[0]]}?"
    elsewhere = difflib.get_close_matches(name, [s.name for s in SETTINGS], n=1)
    if elsewhere:
        setting = next(s for s in SETTINGS if s.name == elsewhere[0])
        table = f"in the [{setting.section}] table" if setting.section else "at the top level"
        return f"; did you mean {setting.key}? (it belongs {table})"
    return f"; known keys here: {', '.join(here)}"


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _layers(setting: Setting[Any], flags: Mapping[str, Any], environ: Mapping[str, str],
            file_values: Mapping[str, object], file_source: str) -> list[_Given]:
    """What each layer says about ``setting``, highest precedence first (the default is not included)."""
    layers: list[_Given] = []
    flagged = flags.get(setting.key)
    if flagged is not None:
        layers.append(_Given(flagged, f"flag {setting.flag or '--' + setting.key}", isinstance(flagged, str)))
    # An empty variable counts as unset: container specs often carry `NAME=` to mean "not configured".
    if setting.env is not None and environ.get(setting.env, "").strip():
        layers.append(_Given(environ[setting.env], f"env {setting.env}", True))
    if setting.key in file_values:
        layers.append(_Given(file_values[setting.key], file_source, False))
    return layers


def _resolve(setting: Setting[Any], layers: list[_Given], environ: Mapping[str, str]) -> tuple[object, str]:
    """The winning value and its source. Every given layer is validated, not only the winner."""
    checked = [(_check(setting, setting.key, given), given.source) for given in layers]
    if checked:
        return checked[0]
    # The default is validated only when used: $MAX_CONCURRENT_TASKS does not matter under --workers.
    raw, source, is_text = setting.default(environ)
    return _check(setting, setting.key, _Given(raw, source, is_text)), source


def _check(setting: Setting[Any], key: str, given: _Given) -> object:
    """``given`` through ``setting``'s validator; a ``ConfigError`` names key, value and source."""
    try:
        value = setting.text(given.value) if given.is_text and isinstance(given.value, str) else given.value
        return setting.validate(value)
    except ValueError as exc:
        raise ConfigError(f"{key} = {_literal(given.value)} ({given.source}): {exc}") from None


def _check_flag_keys(flags: Mapping[str, Any]) -> None:
    for key in flags:
        if key not in _BY_KEY:
            raise ConfigError(f"unknown setting {key!r} given as a flag{_suggest(key, list(_BY_KEY))}")


def _function_overrides(name: str, table: object, source: str) -> FunctionOverrides:
    key = f"{FUNCTIONS_TABLE}.{_toml_key(name)}"
    values: dict[str, object] = {}
    for inner, value in _expect_table(key, table, source).items():
        setting = _PER_FUNCTION.get(inner)
        if setting is None:
            shown = f"{key}.{_toml_key(inner)} = {_literal(value)} ({source})"
            raise ConfigError(f"{shown}: not a per-function setting; [{key}] may set "
                              f"{', '.join(_PER_FUNCTION)}{_suggest(inner, list(_PER_FUNCTION))}")
        values[inner] = _check(setting, f"{key}.{inner}", _Given(value, source, False))
    return FunctionOverrides(name=name, source=source, **cast(dict[str, Any], values))


def _build(values: Mapping[str, object], sources: Mapping[str, str], tables: Mapping[str, Any],
           file_source: str, located: tuple[Path, str] | None) -> Config:
    def get(setting: Setting[T]) -> T:
        return cast(T, values[setting.key])

    functions = {name: _function_overrides(name, table, file_source) for name, table in tables.items()}
    return Config(
        app=get(APP),
        workers=get(WORKERS),
        shutdown_grace=get(SHUTDOWN_GRACE),
        poll_timeout=get(POLL_TIMEOUT),
        startup_wait=get(STARTUP_WAIT),
        limits=JobLimits(timeout=get(TIMEOUT), soft_timeout=get(SOFT_TIMEOUT),
                         memory_limit=get(MEMORY_LIMIT), max_result_size=get(MAX_RESULT_SIZE),
                         soft_memory_limit=get(SOFT_MEMORY_LIMIT), max_worker_memory=get(MAX_WORKER_MEMORY)),
        kill_grace=get(KILL_GRACE),
        max_jobs_per_worker=get(MAX_JOBS_PER_WORKER),
        log_format=get(LOG_FORMAT),
        log_level=get(LOG_LEVEL),
        stats_interval=get(STATS_INTERVAL),
        logger_levels=get(LOGGER_LEVELS),
        worker_nice=get(WORKER_NICE),
        cgroups=get(CGROUPS),
        health_file=get(HEALTH_FILE),
        health_unreachable_after=get(HEALTH_UNREACHABLE_AFTER),
        functions=MappingProxyType(functions),
        sources=MappingProxyType(dict(sources)),
        file=located[0] if located else None,
        file_origin=located[1] if located else None,
    )


# ---------------------------------------------------------------------------------------------------
# Limits: soft < hard, in [limits] and after every per-function layering.
# ---------------------------------------------------------------------------------------------------

def _check_all_limits(config: Config) -> None:
    origins = {name: f"{s.key}, {config.source(s.key)}" for name, s in _PER_FUNCTION.items()}
    _check_soft_below_hard(config.limits, origins, "")
    for name in config.functions:
        limits, origins = _layer_function_limits(config, name, None)
        _check_soft_below_hard(limits, origins, f"function {name!r}: ")


def _layer_function_limits(config: Config, name: str, declared: Mapping[str, object] | None,
                           ) -> tuple[JobLimits, dict[str, str]]:
    """``[functions.NAME]`` > the decorator > ``[limits]``, and for each limit where it came from."""
    overrides = config.functions.get(name)
    changes: dict[str, object] = {}
    origins: dict[str, str] = {}
    for limit, setting in _PER_FUNCTION.items():
        own = getattr(overrides, limit, INHERIT)
        declared_value = _declared(declared, limit)
        if own is not INHERIT and overrides is not None:
            changes[limit] = own
            origins[limit] = f"{FUNCTIONS_TABLE}.{_toml_key(name)}.{limit}, {overrides.source}"
        elif declared_value is not None:
            changes[limit] = declared_value
            origins[limit] = f"declared by @cmworker.function on {name!r}"
        else:
            origins[limit] = f"{setting.key}, {config.source(setting.key)}"
    return dataclasses.replace(config.limits, **cast(dict[str, Any], changes)), origins


def _declared(declared: Mapping[str, object] | None, limit: str) -> object:
    """The value a function declared for ``limit``, or None."""
    # The decorator has no max_result_size: a function cannot declare one, only its table can.
    return None if declared is None else declared.get(limit)


def _check_soft_below_hard(limits: JobLimits, origins: Mapping[str, str], context: str) -> None:
    soft_memory, hard_memory = limits.soft_memory_limit, limits.memory_limit
    if soft_memory is not None and hard_memory is not None and soft_memory >= hard_memory:
        raise ConfigError(
            f"{context}soft_memory_limit = {_PER_FUNCTION['soft_memory_limit'].show(soft_memory)} "
            f"({origins['soft_memory_limit']}) must be less than memory_limit = "
            f"{_PER_FUNCTION['memory_limit'].show(hard_memory)} ({origins['memory_limit']}): the soft limit has "
            "to be passed before the hard one kills the job")
    soft, hard = limits.soft_timeout, limits.timeout
    if soft is None or hard is None or soft < hard:
        return
    raise ConfigError(
        f"{context}soft_timeout = {_show_duration(soft)} ({origins['soft_timeout']}) must be less than "
        f"timeout = {_show_duration(hard)} ({origins['timeout']}): the soft timeout has to fire before "
        "the hard one kills the job"
    )


# ---------------------------------------------------------------------------------------------------
# Rendering: `cmworker config`.
# ---------------------------------------------------------------------------------------------------

def _render(config: Config) -> str:
    rows: list[tuple[str, str]] = []   # (TOML line, comment); a "" line is a blank line
    where = f"{config.file} ({config.file_origin})" if config.file else "no file (defaults, env and flags)"
    rows.append((f"# cmworker configuration from {where}", ""))
    rows.append(("# precedence: flag > env > file > default", ""))
    for section in ("", *_SECTIONS):
        if section:
            rows += [("", ""), (f"[{section}]", "")]
        for setting in (s for s in SETTINGS if s.section == section):
            value = setting.value_in(config)
            line = f"{setting.name} = {setting.show(value)}"
            if setting is APP and value is None:
                line = f"# {setting.name} is not set"
            rows.append((line, config.source(setting.key)))
    if config.functions:
        rows += [("", ""), ("# per function: [functions.NAME] > @cmworker.function(...) > [limits]", "")]
    for name, overrides in config.functions.items():
        rows += [("", ""), (f"[{FUNCTIONS_TABLE}.{_toml_key(name)}]", "")]
        rows += [(f"{limit} = {_PER_FUNCTION[limit].show(value)}", overrides.source)
                 for limit, value in overrides.items()]
    width = max(len(line) for line, comment in rows if comment) + 2
    return "".join(f"{line.ljust(width)}# {comment}\n" if comment else f"{line}\n" for line, comment in rows)


# ---------------------------------------------------------------------------------------------------
# Command line: flags generated from the declaration, and `cmworker config`.
# ---------------------------------------------------------------------------------------------------

# Flag values land on the Namespace under this prefix, so they cannot collide with a command's own
# arguments, and with default=SUPPRESS they are there only when the user actually passed the flag.
_DEST = "setting:"


def add_config_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add ``--config FILE`` and the flags of the settings ``names`` (dotted keys; default: all flags)."""
    wanted = [_flagged(name) for name in ([s.key for s in SETTINGS if s.flag] if names is None else names)]
    group = parser.add_argument_group("configuration", f"override {DEFAULT_FILE}; durations take "
                                      "'90s', '5m', '1h30m' or seconds, sizes '512MiB', '2GB' or bytes")
    group.add_argument("--config", metavar="FILE", default=None,
                       help=f"configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_FILE} if present)")
    for setting, flag in wanted:
        help_text = f"{setting.help} Default: {setting.default_doc}."
        if setting.env:
            help_text += f" Env: {setting.env}."
        # argparse %-formats help strings, so a literal % must be doubled.
        group.add_argument(flag, dest=_DEST + setting.key, metavar=setting.metavar,
                           default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))


def _flagged(name: str) -> tuple[Setting[Any], str]:
    setting = _BY_KEY.get(name)
    if setting is None or setting.flag is None:
        raise ValueError(f"{name!r} is not a setting with a command-line flag")
    return setting, setting.flag


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by dotted key (flags not passed are absent)."""
    return {dest[len(_DEST):]: value for dest, value in vars(args).items() if dest.startswith(_DEST)}
