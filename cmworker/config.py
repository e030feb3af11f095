"""The one declaration of every cmworker setting, and everything derived from it.

Each setting is a ``Setting`` in ``SETTINGS``: its dotted key (``limits.timeout`` lives in the ``[limits]``
table), a type name, a validator, its default, help text, and optionally a command-line flag and an
environment variable. Nothing else in cmworker names a setting: the TOML loader, the argparse flags
(``add_config_flags``), the ``cmworker config`` listing and ``docs/configuration.md``
(``scripts/gen_config_docs.py``) are all generated from that table, so adding a setting is one entry
there plus the ``Config`` attribute it fills.

How a value gets into ``Config``::

    --timeout 90          flag     ─┐
    CMWORKER_TIMEOUT=90   env      ─┤  the highest layer that has the key wins; every value
    [limits] timeout=...  file     ─┤  given in any layer goes through the setting's validator,
    "1h"                  default  ─┘  so a typo is an error even where a flag overrides it
                                       │
                                       ▼
    Config(limits=JobLimits(timeout=90.0, ...), sources={"limits.timeout": "flag --timeout"}, ...)

Validators coerce and reject. A flag or an environment variable is text, so integer settings turn
``"4"`` into ``4`` first; a TOML value already has a type, and ``workers = "4"`` or ``workers = true``
is an error (``True`` is an ``int`` to Python, never a worker count). Durations and sizes are parsed
once, here (``cmworker.units``), and are floats of seconds and ints of bytes everywhere else.

"Unlimited" is spelled ``"none"`` (a string, since TOML has no null), for ``timeout``,
``soft_timeout`` and ``memory_limit``; ``0`` is rejected for them instead of meaning "no limit",
because a zero timeout reads as "kill at once" as easily as "never". ``max_jobs_per_worker = 0``
keeps its conventional meaning, "never recycle", as it cannot be misread as a limit of zero jobs.

Per-function limits: ``[functions.NAME]`` tables override ``timeout``, ``soft_timeout``,
``memory_limit`` and ``max_result_size`` for one function. ``Config.limits_for`` resolves them:
``[functions.NAME]`` > the function's ``@cmworker.function(...)`` declaration > ``[limits]``. Flags and
environment variables set ``[limits]`` only, so ``--timeout`` never overrides a limit that a function
declared or that its own table sets. Every ``ConfigError`` names the key, the value and where it came
from (``file /path/cmworker.toml``, ``flag --workers``, ``env MAX_CONCURRENT_TASKS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import enum
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from cmworker.errors import ConfigError
from cmworker.limits import JobLimits
from cmworker.units import format_duration, format_size, parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found]  # not installed beside a 3.11+ tomllib

if TYPE_CHECKING:
    from cmworker.app.registry import FunctionSpec

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FILE",
    "FUNCTIONS_TABLE",
    "INHERIT",
    "SETTINGS",
    "WORKERS_ENV",
    "Config",
    "FunctionOverrides",
    "Inherit",
    "Setting",
    "add_config_flags",
    "flags_from_args",
    "load_config",
    "load_config_from_args",
]

T = TypeVar("T")

CONFIG_ENV = "CMWORKER_CONFIG"      # names the configuration file
DEFAULT_FILE = "cmworker.toml"      # read from the working directory when nothing names a file
WORKERS_ENV = "MAX_CONCURRENT_TASKS"  # set by Foundry: how many jobs it routes to this replica at once

# A source says where a value came from: "default", "file /app/cmworker.toml", "env CMWORKER_TIMEOUT",
# "flag --timeout". Sources appear in error messages and in `cmworker config`.
DEFAULT = "default"
SET_IN_CODE = "set in code"  # the source of a value in a Config constructed directly


# ---------------------------------------------------------------------------------------------------
# Validators. Each takes a TOML value (or a flag/env string after `text`), returns the typed value or
# raises ValueError with a phrase saying what is wrong; the loader prefixes key, value and source.
# ---------------------------------------------------------------------------------------------------

def _describe(value: object) -> str:
    """``value`` as a person would name it in an error: "the string '4'", "the boolean true"."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "the boolean"), (str, "the string"), (int, "the integer"), (float, "the float"),
        (dict, "the table"), (list, "the array"), ((datetime.date, datetime.time), "the date/time"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return f"{name} {_literal(value)}"
    return repr(value)


def _whole_number(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def validate(value: object) -> int:
        # bool is a subclass of int: without this check `workers = true` would mean one worker.
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (write it without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
            raise ValueError(f"expected a whole number, not {_describe(value)}{hint}")
        if value < minimum:
            raise ValueError(f"must be {minimum} or more")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be {maximum} or less")
        return value

    return validate


def _int_text(text: str) -> object:
    """A flag or environment string for an integer setting, as the int it spells."""
    stripped = text.strip()
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    raise ValueError(f"{text!r} is not a whole number")


def _is_none(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "none"


def _or_none(validate: Callable[[object], T]) -> Callable[[object], T | None]:
    """Also accept the string "none" (any case), meaning unlimited/unset."""

    def validate_or_none(value: object) -> T | None:
        return None if _is_none(value) else validate(value)

    return validate_or_none


def _duration(*, positive: bool) -> Callable[[object], float]:
    def validate(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError('must be more than 0 (write "none" for no limit)')
        return seconds

    return validate


def _size(*, minimum: int, hint: str = "") -> Callable[[object], int]:
    def validate(value: object) -> int:
        size = parse_size(value)
        if size < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}{hint}")
        return size

    return validate


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {_describe(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _string_or_unset(value: object) -> str | None:
    # None is only ever the declared default (TOML has no null, and a None flag means "not given").
    return None if value is None else _string(value)


def _choice(choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> Callable[[object], str]:
    allowed = tuple(choices)
    aliases = dict(aliases or {})

    def validate(value: object) -> str:
        text = _string(value).lower()
        text = aliases.get(text, text)
        for choice in allowed:
            if choice.lower() == text:
                return choice
        raise ValueError(f"must be one of {', '.join(allowed)}")

    return validate


_LEVEL = _choice(("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"), {"warning": "warn", "critical": "fatal"})


def _logger_levels(value: object) -> tuple[tuple[str, str], ...]:
    """A table of logger name -> level; from the environment, ``name=LEVEL`` pairs separated by commas."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError("write logger=LEVEL pairs separated by commas, e.g. 'urllib3=WARN,app=DEBUG'")
        value = {name.strip(): level.strip() for name, _, level in pairs}
    if not isinstance(value, Mapping):
        raise ValueError("must be a table of logger name = level, e.g. { urllib3 = \"WARN\" }")
    out = []
    for name, level in value.items():
        try:
            out.append((str(name), _LEVEL(level)))
        except ValueError as exc:
            raise ValueError(f"logger {name!r}: {exc}") from None
    return tuple(sorted(out))


def _show_levels(value: tuple[tuple[str, str], ...]) -> str:
    return "{ " + ", ".join(f"{json.dumps(n)} = {json.dumps(lv)}" for n, lv in value) + " }" if value else "{}"


# Show a typed value the way it is written in cmworker.toml (so `cmworker config` output is valid TOML).

def _show_duration(value: float | None) -> str:
    return '"none"' if value is None else json.dumps(format_duration(value))


def _show_size(value: int | None) -> str:
    return '"none"' if value is None else json.dumps(format_size(value))


def _show_int(value: int) -> str:
    return str(value)


def _show_str(value: str | None) -> str:
    return "(not set)" if value is None else json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# The declaration.
# ---------------------------------------------------------------------------------------------------

Default = Callable[[Mapping[str, str]], tuple[object, str, bool]]
"""Given the environment: (raw value, source, whether the value is text to convert first)."""


def _fixed(raw: object) -> Default:
    return lambda environ: (raw, DEFAULT, False)


def _default_workers(environ: Mapping[str, str]) -> tuple[object, str, bool]:
    # Foundry routes at most MAX_CONCURRENT_TASKS jobs to a replica, so more workers would idle and fewer
    # would leave routed jobs waiting. It is read only when no layer sets `workers`, so a bad value in
    # it is an error only when it is actually used.
    raw = environ.get(WORKERS_ENV, "").strip()
    if raw:
        return raw, f"env {WORKERS_ENV}", True
    return os.cpu_count() or 1, "default (CPU count)", False


def _identity(text: str) -> object:
    return text


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: everything the loader, the flags, ``cmworker config`` and the docs know about it."""

    key: str                                  # dotted TOML key: "workers", "limits.timeout"
    type: str                                 # for people: "duration", "positive integer", ...
    help: str
    validate: Callable[[object], T]           # coerce a TOML value or raise ValueError
    show: Callable[[T], str]                  # a typed value as TOML, e.g. '"5m"'
    default: Default
    default_doc: str                          # the default as the docs and --help show it
    attr: str                                 # where Config keeps it: "workers", "limits.timeout"
    flag: str | None = None                   # "--timeout"
    env: str | None = None                    # "CMWORKER_TIMEOUT"
    metavar: str = "VALUE"
    text: Callable[[str], object] = _identity  # a flag/env string -> the TOML value it stands for
    per_function: bool = False                # may appear in [functions.NAME]

    @property
    def section(self) -> str:
        """The TOML table holding the setting ("" for the top level)."""
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        """The key inside its table."""
        return self.key.rpartition(".")[2]

    @property
    def fixed_default(self) -> T:
        """The typed default of a setting whose default does not depend on the environment.

        For code that needs this setting's default outside ``Config`` (the pool's options), so that the
        number is written once, here. ``ValueError`` for a setting such as ``workers`` whose default is
        read from the environment.
        """
        raw, source, is_text = self.default({})
        if source != DEFAULT or is_text:
            raise ValueError(f"the default of {self.key} depends on the environment")
        return self.validate(raw)

    def value_in(self, config: Config) -> T:
        """This setting's value in ``config``."""
        target: Any = config
        for part in self.attr.split("."):
            target = getattr(target, part)
        return cast(T, target)


def _setting(key: str, type: str, help: str, validate: Callable[[object], T], show: Callable[[T], str],
             default: object, **options: Any) -> Setting[T]:
    """Declare a setting with a fixed default, checked by its own validator when the module loads."""
    return Setting(key=key, type=type, help=help, validate=validate, show=show, default=_fixed(default),
                   default_doc=show(validate(default)), **options)


APP: Setting[str | None] = _setting(
    "app", "string",
    "The functions to serve: a module name (`app`), `module:attribute` (a function, or a dict or list "
    "of functions), or the path of a .py file. `cmworker run` needs it.",
    _string_or_unset, _show_str, None,
    attr="app", flag="--app", env="CMWORKER_APP", metavar="APP",
)
WORKERS: Setting[int] = Setting(
    key="workers", type="positive integer",
    help="How many worker processes run jobs at once; cmworker asks the runtime for a job only while "
         f"one of them is idle. Foundry sets ${WORKERS_ENV} to the number of jobs it routes to a "
         "replica at once, so that is the default.",
    validate=_whole_number(1), show=_show_int, default=_default_workers,
    default_doc=f"${WORKERS_ENV}, else the CPU count",
    attr="workers", flag="--workers", env="CMWORKER_WORKERS", metavar="N", text=_int_text,
)
WORKER_NICE: Setting[int] = _setting(
    "worker_nice", "integer 0 to 19",
    "How much lower the workers' CPU priority is than the parent's: added to the parent's nice value "
    "(Linux caps the sum at 19). The parent needs little CPU, but needs it at once: to post an answer "
    "and take the next job, or to kill a job at its deadline. When jobs keep every CPU busy and the "
    "workers have the parent's priority, each of those steps can wait behind a job's time slice, "
    "milliseconds per job (see docs/benchmarks.md). 0 runs the workers at the parent's priority.",
    _whole_number(0, 19), _show_int, 19,
    attr="worker_nice", env="CMWORKER_WORKER_NICE", metavar="N", text=_int_text,
)
SHUTDOWN_GRACE: Setting[float] = _setting(
    "shutdown_grace", "duration",
    "After SIGTERM, how long jobs already running may go on before they are killed and answered with a "
    "`shutdown` error. Keep it below the platform's termination grace period (30s by default on "
    "Kubernetes), or the container is killed before those answers are posted.",
    _duration(positive=False), _show_duration, "25s",
    attr="shutdown_grace", env="CMWORKER_SHUTDOWN_GRACE", metavar="DURATION",
)
POLL_TIMEOUT: Setting[float] = _setting(
    "poll_timeout", "duration",
    "How long one GET job may wait for the runtime's answer before it is abandoned and asked again. The "
    "runtime holds a GET for about 5s when it has no job, so this must be well above that.",
    _duration(positive=True), _show_duration, "30s",
    attr="poll_timeout", env="CMWORKER_POLL_TIMEOUT", metavar="DURATION",
)
TIMEOUT: Setting[float | None] = _setting(
    "limits.timeout", "duration or \"none\"",
    "Hard wall-clock limit on one job, measured from dispatch to its worker. When it passes, the job's "
    'process group is killed and the job answered with a `timeout` error. "none" means no limit.',
    _or_none(_duration(positive=True)), _show_duration, "1h",
    attr="limits.timeout", flag="--timeout", env="CMWORKER_TIMEOUT", metavar="DURATION", per_function=True,
)
SOFT_TIMEOUT: Setting[float | None] = _setting(
    "limits.soft_timeout", "duration or \"none\"",
    "Raise `cmworker.JobTimeout` inside the job after this long, so it can clean up before the hard "
    'timeout kills it. Must be less than `timeout`. "none" (the default) means no soft timeout.',
    _or_none(_duration(positive=True)), _show_duration, "none",
    attr="limits.soft_timeout", flag="--soft-timeout", env="CMWORKER_SOFT_TIMEOUT", metavar="DURATION",
    per_function=True,
)
MEMORY_LIMIT: Setting[int | None] = _setting(
    "limits.memory_limit", "size or \"none\"",
    "Largest resident memory (RSS) of a job's whole process tree; above it the tree is killed and the "
    'job answered with a `memory_limit` error. At least 1MiB. "none" (the default) means no limit.',
    _or_none(_size(minimum=2**20, hint=" (plain numbers are bytes: write '512MiB', not 512)")),
    _show_size, "none",
    attr="limits.memory_limit", flag="--memory-limit", env="CMWORKER_MEMORY_LIMIT", metavar="SIZE",
    per_function=True,
)
KILL_GRACE: Setting[float] = _setting(
    "limits.kill_grace", "duration",
    "When cmworker kills a job, the time between SIGTERM and SIGKILL to its process group. 0 sends "
    "SIGKILL at once.",
    _duration(positive=False), _show_duration, "50ms",
    attr="kill_grace", env="CMWORKER_KILL_GRACE", metavar="DURATION",
)
MAX_JOBS_PER_WORKER: Setting[int] = _setting(
    "limits.max_jobs_per_worker", "integer >= 0",
    "Replace a worker with a fresh one after it has run this many jobs, to shed leaked memory or "
    "state. 0 means never.",
    _whole_number(0), _show_int, 0,
    attr="max_jobs_per_worker", env="CMWORKER_MAX_JOBS_PER_WORKER", metavar="N", text=_int_text,
)
MAX_RESULT_SIZE: Setting[int] = _setting(
    "limits.max_result_size", "size",
    "Largest encoded result of one job; a larger one is answered with a `result_too_large` error.",
    _size(minimum=1), _show_size, "32MiB",
    attr="limits.max_result_size", env="CMWORKER_MAX_RESULT_SIZE", metavar="SIZE", per_function=True,
)
LOG_FORMAT: Setting[str] = _setting(
    "logging.format", "one of auto, sls, console",
    'Log line format: "sls" is the JSON lines the Foundry Logs tab reads, "console" is for people, '
    '"auto" picks console in dev mode on a terminal and sls everywhere else.',
    _choice(("auto", "sls", "console")), _show_str, "auto",
    attr="log_format", flag="--log-format", env="CMWORKER_LOG_FORMAT", metavar="FORMAT",
)
LOG_LEVEL: Setting[str] = _setting(
    "logging.level", "log level",
    "Lowest level logged: TRACE, DEBUG, INFO, WARN, ERROR or FATAL (Python's WARNING and CRITICAL are "
    "accepted for WARN and FATAL).",
    _choice(("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"), {"warning": "warn", "critical": "fatal"}),
    _show_str, "INFO",
    attr="log_level", flag="--log-level", env="CMWORKER_LOG_LEVEL", metavar="LEVEL",
)
STATS_INTERVAL: Setting[float | None] = _setting(
    "logging.stats_interval", "duration or \"none\"",
    "How often a `stats` line reports jobs by outcome, workers alive, respawns, jobs held and the parent's "
    'memory. "none" turns it off.',
    _or_none(_duration(positive=True)), _show_duration, "1m",
    attr="stats_interval", env="CMWORKER_STATS_INTERVAL", metavar="DURATION",
)
LOGGER_LEVELS: Setting[tuple[tuple[str, str], ...]] = _setting(
    "logging.logger_levels", "table of logger = level",
    "Levels for single loggers, above or below `level`: for example `{ urllib3 = \"WARN\" }` quiets a "
    "chatty library, `{ \"app.pricing\" = \"DEBUG\" }` opens up one module of the app. Applies in the "
    "workers too.",
    _logger_levels, _show_levels, {},
    attr="logger_levels", env="CMWORKER_LOGGER_LEVELS", metavar="NAME=LEVEL,...",
)

SETTINGS: tuple[Setting[Any], ...] = (
    APP, WORKERS, WORKER_NICE, SHUTDOWN_GRACE, POLL_TIMEOUT,
    TIMEOUT, SOFT_TIMEOUT, MEMORY_LIMIT, KILL_GRACE, MAX_JOBS_PER_WORKER, MAX_RESULT_SIZE,
    LOG_FORMAT, LOG_LEVEL, LOGGER_LEVELS, STATS_INTERVAL,
)
_BY_KEY: dict[str, Setting[Any]] = {s.key: s for s in SETTINGS}
_SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS if s.section))
# The per-function keys are the [limits] settings marked per_function; [functions.NAME] uses their
# validators, so a per-function value obeys exactly the rules of its [limits] default.
_PER_FUNCTION: dict[str, Setting[Any]] = {s.name: s for s in SETTINGS if s.per_function}
FUNCTIONS_TABLE = "functions"


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
    logger_levels: tuple[tuple[str, str], ...] = ()  # (logger name, SLS level)
    worker_nice: int = 19                # added to the parent's nice value in each worker
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

    def limits_for(self, name: str, declared: FunctionSpec | Mapping[str, Any] | None = None) -> JobLimits:
        """The limits for function ``name``.

        Precedence: its ``[functions.NAME]`` table > ``declared`` (its decorator) > ``[limits]``; flags
        and environment variables reach it only through ``[limits]``. ``declared`` is the function's
        ``FunctionSpec``, or a mapping with its ``timeout``/``soft_timeout``/``memory_limit`` (the
        parent process gets those from the template as JSON, not as a spec); ``None`` values are
        undeclared. Raises ``ConfigError`` naming the function when the result has
        ``soft_timeout >= timeout``.
        """
        if declared is not None and not isinstance(declared, Mapping) and declared.name != name:
            raise ValueError(f"limits_for({name!r}) was given the declaration of {declared.name!r}")
        limits, origins = _layer_function_limits(self, name, declared)
        _check_soft_below_hard(limits, origins, f"function {name!r}: ")
        return limits

    def check_functions(self, registered: Iterable[str]) -> None:
        """``ConfigError`` when a ``[functions.NAME]`` table names no registered function (likely a typo)."""
        known = list(registered)
        for name, overrides in self.functions.items():
            if name not in known:
                raise ConfigError(f"[{FUNCTIONS_TABLE}.{_toml_key(name)}] ({overrides.source}): the app "
                                  f"registers no function {name!r}{_suggest(name, known)}")

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
        limits=JobLimits(timeout=get(TIMEOUT), soft_timeout=get(SOFT_TIMEOUT),
                         memory_limit=get(MEMORY_LIMIT), max_result_size=get(MAX_RESULT_SIZE)),
        kill_grace=get(KILL_GRACE),
        max_jobs_per_worker=get(MAX_JOBS_PER_WORKER),
        log_format=get(LOG_FORMAT),
        log_level=get(LOG_LEVEL),
        stats_interval=get(STATS_INTERVAL),
        logger_levels=get(LOGGER_LEVELS),
        worker_nice=get(WORKER_NICE),
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


def _layer_function_limits(config: Config, name: str, declared: FunctionSpec | Mapping[str, Any] | None,
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


def _declared(declared: FunctionSpec | Mapping[str, Any] | None, limit: str) -> object:
    """The value a function declared for ``limit``, or None."""
    if isinstance(declared, Mapping):
        return declared.get(limit)
    # A FunctionSpec has no max_result_size: a function cannot declare one, only its table can.
    return getattr(declared, limit, None)


def _check_soft_below_hard(limits: JobLimits, origins: Mapping[str, str], context: str) -> None:
    soft, hard = limits.soft_timeout, limits.timeout
    if soft is None or hard is None or soft < hard:
        return
    raise ConfigError(
        f"{context}soft_timeout = {_show_duration(soft)} ({origins['soft_timeout']}) must be less than "
        f"timeout = {_show_duration(hard)} ({origins['timeout']}): the soft timeout has to fire before "
        "the hard one kills the job"
    )


# ---------------------------------------------------------------------------------------------------
# Showing values.
# ---------------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _literal(value: object, limit: int = 60) -> str:
    """``value`` as TOML would spell it, cut short; for messages, not for writing files."""
    text = _literal_full(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _literal_full(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_literal_full(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_literal_full(v) for v in value) + "]"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)


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
