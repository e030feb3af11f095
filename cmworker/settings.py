"""The one declaration of every cmworker setting: key, type, validator, default, help.

Each setting is a ``Setting`` in ``SETTINGS``: its dotted key (``limits.timeout`` lives in the ``[limits]``
table), a type name, a validator, its default, help text, and optionally a command-line flag and an
environment variable. Nothing else in cmworker names a setting: the TOML loader and the argparse flags
(``cmworker.config``), the ``cmworker config`` listing and ``docs/configuration.md``
(``scripts/gen_config_docs.py``) are all generated from that table, so adding a setting is one entry
there plus the ``Config`` attribute it fills.

Validators coerce and reject. A flag or an environment variable is text, so integer settings turn
``"4"`` into ``4`` first; a TOML value already has a type, and ``workers = "4"`` or ``workers = true``
is an error (``True`` is an ``int`` to Python, never a worker count). Durations and sizes are parsed
once, here (``cmworker.units``), and are floats of seconds and ints of bytes everywhere else.

"Unlimited" is spelled ``"none"`` (a string, since TOML has no null), for ``timeout``,
``soft_timeout`` and ``memory_limit``; ``0`` is rejected for them instead of meaning "no limit",
because a zero timeout reads as "kill at once" as easily as "never". ``max_jobs_per_worker = 0``
keeps its conventional meaning, "never recycle", as it cannot be misread as a limit of zero jobs.

The settings marked ``per_function`` may also appear in ``[functions.NAME]`` tables, checked by the
same validators (``cmworker.config`` layers them). The underscored names that ``cmworker.config``
imports (``_BY_KEY``, ``_PER_FUNCTION``, ``_literal``...) are shared with it only, not public.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from cmworker.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "FUNCTIONS_TABLE",
    "SETTINGS",
    "WORKERS_ENV",
    "Setting",
]

T = TypeVar("T")

WORKERS_ENV = "MAX_CONCURRENT_TASKS"  # set by Foundry: how many jobs it routes to this replica at once

# A source says where a value came from: "default", "file /app/cmworker.toml", "env CMWORKER_TIMEOUT",
# "flag --timeout". Sources appear in error messages and in `cmworker config`.
DEFAULT = "default"


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

    def value_in(self, config: object) -> T:
        """This setting's value in ``config`` (a ``cmworker.config.Config``, which this module cannot name
        without importing it: config imports the declaration, never the other way)."""
        target: Any = config
        for part in self.attr.split("."):
            target = getattr(target, part)
        return cast(T, target)


def _duration_setting(key: str, help: str, default: str, *, positive: bool, unset: bool = False,
                      **options: Any) -> Setting[Any]:
    """Declare a duration ("90s", "5m", "1h30m" or seconds); with ``unset``, "none" too."""
    validate = _duration(positive=positive)
    return _setting(key, 'duration or "none"' if unset else "duration", help,
                    _or_none(validate) if unset else validate, _show_duration, default, metavar="DURATION", **options)


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
CGROUPS: Setting[str] = _setting(
    "cgroups", '"auto" or "off"',
    "How cmworker finds every process a job started. \"auto\": in a cgroup of each worker's own where the "
    "container lets cmworker create cgroups (a delegated, writable cgroup v2), so nothing a job forks "
    "escapes the kill and the memory limit, and in the worker's process tree otherwise (the worker is "
    "the subreaper of whatever the job starts). \"off\": the process tree always, for a host where "
    "creating cgroups is unwelcome. The template logs which mode is in force (`job_process_tracking`).",
    _choice(("auto", "off")), _show_str, "auto",
    attr="cgroups", env="CMWORKER_CGROUPS", metavar="MODE",
)
SHUTDOWN_GRACE: Setting[float] = _duration_setting(
    "shutdown_grace",
    "After SIGTERM, how long jobs already running may go on before they are killed and answered with a "
    "`shutdown` error. Keep it below the platform's termination grace period (30s by default on "
    "Kubernetes), or the container is killed before those answers are posted.",
    "25s", positive=False,
    attr="shutdown_grace", env="CMWORKER_SHUTDOWN_GRACE",
)
POLL_TIMEOUT: Setting[float] = _duration_setting(
    "poll_timeout",
    "How long one GET job may wait for the runtime's answer before it is abandoned and asked again. The "
    "runtime holds a GET for about 5s when it has no job, so this must be well above that.",
    "30s", positive=True,
    attr="poll_timeout", env="CMWORKER_POLL_TIMEOUT",
)
STARTUP_WAIT: Setting[float] = _duration_setting(
    "startup_wait",
    "At start-up, how long to wait for each file the platform may write late (the module auth token, the "
    "runtime's CA bundle, the connection file) before exiting with an error naming it.",
    "60s", positive=True,
    attr="startup_wait", env="CMWORKER_STARTUP_WAIT",
)
TIMEOUT: Setting[float | None] = _duration_setting(
    "limits.timeout",
    "Hard wall-clock limit on one job, measured from dispatch to its worker. When it passes, the job's "
    'processes (its worker and all it started) are killed and the job answered with a `timeout` error. '
    '"none" means no limit.',
    "1h", positive=True, unset=True,
    attr="limits.timeout", flag="--timeout", env="CMWORKER_TIMEOUT", per_function=True,
)
SOFT_TIMEOUT: Setting[float | None] = _duration_setting(
    "limits.soft_timeout",
    "Raise `cmworker.JobTimeout` inside the job after this long, so it can clean up before the hard "
    'timeout kills it. Must be less than `timeout`. "none" (the default) means no soft timeout.',
    "none", positive=True, unset=True,
    attr="limits.soft_timeout", flag="--soft-timeout", env="CMWORKER_SOFT_TIMEOUT", per_function=True,
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
SOFT_MEMORY_LIMIT: Setting[int | None] = _setting(
    "limits.soft_memory_limit", "size or \"none\"",
    "Raise `cmworker.MemoryLimitExceeded` inside the job (once) when its process tree's RSS passes this, "
    "so it can free memory or return a partial result before `memory_limit` kills it: the memory twin "
    "of `soft_timeout`. Must be less than `memory_limit`. Seen by the same sampler as `memory_limit`, so "
    'a job that grows fast may pass both between two samples. "none" (the default) means none.',
    _or_none(_size(minimum=2**20, hint=" (plain numbers are bytes: write '512MiB', not 512)")),
    _show_size, "none",
    attr="limits.soft_memory_limit", env="CMWORKER_SOFT_MEMORY_LIMIT", metavar="SIZE", per_function=True,
)
MAX_WORKER_MEMORY: Setting[int | None] = _setting(
    "limits.max_worker_memory", "size or \"none\"",
    "Replace a worker with a fresh one after a job that leaves it above this resident memory (its own "
    "RSS once the job is over and cleaned up), to shed memory a job leaked or cached. The job itself is "
    'answered normally. "none" (the default) never replaces a worker for its memory.',
    _or_none(_size(minimum=2**20, hint=" (plain numbers are bytes: write '512MiB', not 512)")),
    _show_size, "none",
    attr="limits.max_worker_memory", env="CMWORKER_MAX_WORKER_MEMORY", metavar="SIZE", per_function=True,
)
KILL_GRACE: Setting[float] = _duration_setting(
    "limits.kill_grace",
    "When cmworker kills a job, the time between SIGTERM and SIGKILL to its processes. The worker "
    "itself is first asked for the Python stack of every thread (the answer carries it), and this is "
    "also the longest cmworker waits for that. 0 sends SIGKILL at once, without a stack.",
    "50ms", positive=False,
    attr="kill_grace", env="CMWORKER_KILL_GRACE",
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
STATS_INTERVAL: Setting[float | None] = _duration_setting(
    "logging.stats_interval",
    "How often a `stats` line reports jobs by outcome, workers alive, respawns, jobs held and the parent's "
    'memory. "none" turns it off.',
    "1m", positive=True, unset=True,
    attr="stats_interval", env="CMWORKER_STATS_INTERVAL",
)
LOGGER_LEVELS: Setting[tuple[tuple[str, str], ...]] = _setting(
    "logging.logger_levels", "table of logger = level",
    "Levels for single loggers, above or below `level`: for example `{ urllib3 = \"WARN\" }` quiets a "
    "chatty library, `{ \"app.pricing\" = \"DEBUG\" }` opens up one module of the app. Applies in the "
    "workers too.",
    _logger_levels, _show_levels, {},
    attr="logger_levels", env="CMWORKER_LOGGER_LEVELS", metavar="NAME=LEVEL,...",
)

HEALTH_FILE: Setting[str] = _setting(
    "health.file", 'path, "auto" or "off"',
    "Where `cmworker run` keeps its status for `cmworker health` (the container's readiness and liveness "
    "probe, see docs/health.md): rewritten every second, and once more on exit with the reason. \"auto\" "
    "is `$XDG_RUNTIME_DIR/cmworker/health.json`, or `cmworker-UID/health.json` in the temporary directory "
    "(`$TMPDIR`, else `/tmp`) without it. \"off\" "
    "writes nothing. The probe must see the same value: set it in the file or the environment, not by flag.",
    _string, _show_str, "auto",
    attr="health_file", env="CMWORKER_HEALTH_FILE", metavar="PATH",
)
HEALTH_UNREACHABLE_AFTER: Setting[float] = _duration_setting(
    "health.unreachable_after",
    "How long GET job may keep failing (or hang past `poll_timeout`) before `cmworker health` reports the "
    "runtime unreachable and fails. A GET the runtime merely holds (its long poll) never counts.",
    "1m", positive=True,
    attr="health_unreachable_after", env="CMWORKER_HEALTH_UNREACHABLE_AFTER",
)

SETTINGS: tuple[Setting[Any], ...] = (
    APP, WORKERS, WORKER_NICE, CGROUPS, SHUTDOWN_GRACE, POLL_TIMEOUT, STARTUP_WAIT,
    TIMEOUT, SOFT_TIMEOUT, MEMORY_LIMIT, SOFT_MEMORY_LIMIT, MAX_WORKER_MEMORY, KILL_GRACE, MAX_JOBS_PER_WORKER,
    MAX_RESULT_SIZE, LOG_FORMAT, LOG_LEVEL, LOGGER_LEVELS, STATS_INTERVAL, HEALTH_FILE, HEALTH_UNREACHABLE_AFTER,
)
_BY_KEY: dict[str, Setting[Any]] = {s.key: s for s in SETTINGS}
_SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS if s.section))
# The per-function keys are the [limits] settings marked per_function; [functions.NAME] uses their
# validators, so a per-function value obeys exactly the rules of its [limits] default.
_PER_FUNCTION: dict[str, Setting[Any]] = {s.name: s for s in SETTINGS if s.per_function}
FUNCTIONS_TABLE = "functions"


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
