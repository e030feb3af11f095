"""``PoolOptions``: each default declared once (in cmworker.config where the setting lives there), taken
from a ``Config`` whole, and handed to the template as the object itself."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import pytest

import cmworker
from cmworker.config import KILL_GRACE, LOG_LEVEL, LOGGER_LEVELS, MAX_JOBS_PER_WORKER, WORKER_NICE, load_config
from cmworker.pool.options import PoolOptions
from tests.pool_harness import running_pool

pytestmark = pytest.mark.timeout(60)


def test_defaults_are_the_declared_defaults_of_the_configuration() -> None:
    """A pool built in code and ``cmworker run`` with no configuration get the same settings."""
    bare = PoolOptions(workers=1)
    configured = PoolOptions.from_config(load_config(environ={}, cwd=Path(__file__).parent))
    for name in ("log_level", "logger_levels", "kill_grace", "max_jobs_per_worker", "worker_nice"):
        assert getattr(bare, name) == getattr(configured, name), name
    assert (bare.kill_grace, bare.worker_nice, bare.max_jobs_per_worker, bare.log_level, bare.logger_levels) == (
        KILL_GRACE.fixed_default, WORKER_NICE.fixed_default, MAX_JOBS_PER_WORKER.fixed_default,
        LOG_LEVEL.fixed_default, LOGGER_LEVELS.fixed_default)


def test_from_config_carries_every_pool_setting(tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_text(
        'app = "my_app"\nworkers = 3\nworker_nice = 5\ncgroups = "off"\n'
        '[limits]\nkill_grace = "2s"\nmax_jobs_per_worker = 7\n'
        '[logging]\nlevel = "DEBUG"\nlogger_levels = { urllib3 = "WARN" }\n')
    options = PoolOptions.from_config(load_config(environ={}, cwd=tmp_path))
    assert options == PoolOptions(workers=3, app="my_app", log_level="DEBUG", logger_levels=[("urllib3", "WARN")],
                                  kill_grace=2.0, max_jobs_per_worker=7, worker_nice=5, cgroups="off",
                                  untraceable=True)  # a replica's pool: jobs of different users share it


def test_options_survive_the_trip_to_the_template_unchanged() -> None:
    options = PoolOptions(workers=2, app="app.py", preload=["json", "decimal"], log_level="WARN",
                          logger_levels=[("a", "DEBUG")], kill_grace=0.25, max_jobs_per_worker=3, worker_nice=4,
                          cgroups="off", prefetch=True, untraceable=True, startup_timeout=9.0,
                          python="/usr/bin/python3")
    back = PoolOptions.from_json(options.to_json())
    assert back == options
    assert [f.name for f in dataclasses.fields(back) if getattr(back, f.name) != getattr(options, f.name)] == []


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        PoolOptions(workers=0)


def test_a_default_read_from_the_environment_has_no_fixed_value() -> None:
    from cmworker.config import WORKERS

    with pytest.raises(ValueError, match="depends on the environment"):
        _ = WORKERS.fixed_default


def test_the_template_gets_the_pools_log_settings() -> None:
    """Workers log by the options' logger levels: raising one logger's level hides its line, only its."""
    for levels, legacy_shown in (((), True), ((("app.legacy", "ERROR"),), False)):
        with running_pool(workers=1, logger_levels=levels) as h:
            job = h.submit("log_things", {"order": 1})
            assert h.wait(job).kind == "ok"
            texts = [o.text for o in h.output if o.job_id == job]
            assert any("legacy warning" in t for t in texts) is legacy_shown
            assert any("order_checked" in t for t in texts)


def test_executor_workers_run_at_the_callers_priority() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with cmworker.Executor(2) as ex:
        assert ex.submit(abs, -1).result(timeout=30) == 1
        assert {psutil.Process(pid).nice() for pid in ex.worker_pids()} == {own}
