"""examples/routes, the app the container image ships: its maths, and its functions served for real.

The maths (examples/routes/routing.py) is tested in-process. The functions are tested the way callers
reach them: `cmworker run` in the example's directory, with its own cmworker.toml, against the embedded
runtime over HTTPS, and `cmworker dev` + `cmworker call` as the example's README shows.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "routes"
WAIT = 60.0


def _load_routing() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routes_routing", APP_DIR / "routing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


routing = _load_routing()


def circle(n: int, radius: float = 10.0, seed: int = 0) -> list[tuple[float, float]]:
    """``n`` points evenly spaced on a circle, in shuffled order (the first one stays first)."""
    points = [(radius * math.cos(2 * math.pi * k / n), radius * math.sin(2 * math.pi * k / n)) for k in range(n)]
    rest = points[1:]
    random.Random(seed).shuffle(rest)
    return [points[0], *rest]


def polygon_perimeter(n: int, radius: float = 10.0) -> float:
    return 2 * n * radius * math.sin(math.pi / n)


def scattered(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(0, 50), rng.uniform(0, 50)) for _ in range(n)]


# -- the maths -----------------------------------------------------------------------------------


def test_distances_are_euclidean_symmetric_and_zero_on_the_diagonal() -> None:
    dist = routing.distance_matrix([(0, 0), (3, 0), (3, 4)])
    assert dist[0][1] == 3 and dist[1][2] == 4 and dist[0][2] == 5
    assert all(dist[i][j] == dist[j][i] for i in range(3) for j in range(3))
    assert [dist[i][i] for i in range(3)] == [0, 0, 0]


def test_tour_length_closes_the_loop_unless_told_not_to() -> None:
    dist = routing.distance_matrix([(0, 0), (1, 0), (1, 1), (0, 1)])
    assert routing.tour_length([0, 1, 2, 3], dist) == pytest.approx(4.0)
    assert routing.tour_length([0, 1, 2, 3], dist, closed=False) == pytest.approx(3.0)
    assert routing.tour_length([2], dist) == 0.0


def test_nearest_neighbour_visits_every_stop_once_from_the_start() -> None:
    dist = routing.distance_matrix(scattered(40, seed=3))
    order = routing.nearest_neighbour(dist, start=7)
    assert order[0] == 7 and sorted(order) == list(range(40))


@pytest.mark.parametrize("n", [5, 12, 60])
def test_two_opt_finds_the_optimal_tour_of_points_in_convex_position(n: int) -> None:
    """For points on a circle the only tour without crossings is the polygon, and 2-opt removes crossings."""
    dist = routing.distance_matrix(circle(n))
    order, _passes = routing.two_opt(list(range(n)), dist, max_passes=1000)
    assert routing.tour_length(order, dist) == pytest.approx(polygon_perimeter(n))


@pytest.mark.parametrize("seed", range(5))
def test_two_opt_never_lengthens_a_tour_and_keeps_its_start(seed: int) -> None:
    dist = routing.distance_matrix(scattered(80, seed))
    first = routing.nearest_neighbour(dist, start=0)
    order, passes = routing.two_opt(first, dist)
    assert order[0] == 0 and sorted(order) == list(range(80)) and passes >= 1
    assert routing.tour_length(order, dist) <= routing.tour_length(first, dist) + 1e-9


def test_anneal_reports_a_best_tour_that_never_gets_longer_and_is_reproducible() -> None:
    dist = routing.distance_matrix(scattered(60, seed=1))
    start = routing.nearest_neighbour(dist)
    steps = list(routing.anneal(start, dist, iterations=5000, seed=4, report_every=1000))
    assert [s.iteration for s in steps] == [1000, 2000, 3000, 4000, 5000]
    lengths = [s.length for s in steps]
    assert lengths == sorted(lengths, reverse=True)
    assert lengths[-1] <= routing.tour_length(start, dist) + 1e-9
    assert all(s.order[0] == start[0] and sorted(s.order) == list(range(60)) for s in steps)
    assert all(s.length == pytest.approx(routing.tour_length(s.order, dist)) for s in steps)
    again = list(routing.anneal(start, dist, iterations=5000, seed=4, report_every=1000))
    assert [s.order for s in again] == [s.order for s in steps]


def test_coverage_of_one_disc_matches_its_area() -> None:
    estimate = routing.coverage([(20.0, 20.0)], radius=5.0, width=40.0, height=40.0, samples=100_000, seed=2)
    expected = math.pi * 25 / 1600
    assert abs(estimate.fraction - expected) < 5 * estimate.standard_error
    assert estimate.samples == 100_000


def test_coverage_is_zero_without_sites_and_whole_when_one_site_reaches_every_corner() -> None:
    assert routing.coverage([], 1.0, 10.0, 10.0, samples=1000).fraction == 0.0
    assert routing.coverage([(5.0, 5.0)], 7.1, 10.0, 10.0, samples=1000).fraction == 1.0


def test_coverage_counts_a_site_in_a_neighbouring_grid_cell() -> None:
    """A sample near a cell border is checked against sites across it (the grid is only a speed-up)."""
    near = routing.coverage([(4.99, 5.0)], 1.0, 10.0, 10.0, samples=20_000, seed=1)
    shifted = routing.coverage([(5.01, 5.0)], 1.0, 10.0, 10.0, samples=20_000, seed=1)
    assert near.fraction == pytest.approx(math.pi / 100, abs=5 * near.standard_error)
    assert shifted.fraction == pytest.approx(math.pi / 100, abs=5 * shifted.standard_error)


@pytest.mark.parametrize(("args", "message"), [((0,), "samples"), ((10, 0.0), "positive")])
def test_coverage_rejects_impossible_arguments(args: tuple[Any, ...], message: str) -> None:
    samples, *radius = args
    with pytest.raises(ValueError, match=message):
        routing.coverage([(0.0, 0.0)], radius[0] if radius else 1.0, 1.0, 1.0, samples=samples)


# -- the functions, served by `cmworker run` --------------------------------------------------------


def stops_json(points: list[tuple[float, float]], prefix: str = "s") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "x_km": x, "y_km": y} for i, (x, y) in enumerate(points)]


@pytest.fixture(scope="module")
def served() -> Iterator[EmbeddedRuntime]:
    """The example, as its container runs it: `cmworker run` in its directory, reading its cmworker.toml."""
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, serving(rt, APP_DIR):
        yield rt


@contextmanager
def serving(rt: EmbeddedRuntime, cwd: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`cmworker run` in ``cwd`` against ``rt``; on leaving, SIGTERM must make it drain and exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "cmworker", "run", *args], cwd=cwd,
                            env={**os.environ, **rt.env(0)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def answer(rt: EmbeddedRuntime, job_id: str) -> tuple[str, Any]:
    """(kind, payload) of the job's one answer; a streamed answer is the list of its items."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        snap = rt.record.job(job_id)
        if snap is not None and snap.answer is not None:
            assert rt.record.accepted(job_id) == 1
            decoder, text, items, at = json.JSONDecoder(), snap.answer.decode(), [], 0
            while at < len(text):
                item, at = decoder.raw_decode(text, at)
                items.append(item)
            payload = items[0] if len(items) == 1 else items
            kind = payload.get("kind", "ok") if isinstance(payload, dict) else "ok"
            return kind, payload
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} was not answered within {WAIT}s")


def test_the_example_posts_typed_schemas(served: EmbeddedRuntime) -> None:
    answer(served, served.submit("route_length", {"stops": [], "order": []}))  # the schemas precede any job
    schemas = {s["functionName"]: s for s in served.record.schemas(0)}
    assert set(schemas) == {"route_length", "plan_route", "improve_route", "coverage"}
    inputs = {i["name"]: (i["required"], i["dataType"]["type"]) for i in schemas["plan_route"]["inputs"]}
    assert inputs == {"stops": (True, "list"), "start": (False, "optionalType"), "max_passes": (False, "integer")}
    coverage_inputs = {i["name"]: i["required"] for i in schemas["coverage"]["inputs"]}
    assert coverage_inputs == {"depots": True, "radius_km": True, "width_km": True, "height_km": True,
                               "samples": False, "seed": False}


def test_route_length_of_a_3_4_5_triangle(served: EmbeddedRuntime) -> None:
    stops = stops_json([(0, 0), (3, 0), (3, 4)])
    assert answer(served, served.submit("route_length", {"stops": stops, "order": ["s0", "s1", "s2"]})) == ("ok", 12.0)


def test_plan_route_returns_the_polygon_for_stops_on_a_circle(served: EmbeddedRuntime) -> None:
    stops = stops_json(circle(40, seed=5))
    kind, plan = answer(served, served.submit("plan_route", {"stops": stops, "start": "s0"}))
    assert kind == "ok", plan
    assert plan["order"][0] == "s0" and sorted(plan["order"]) == sorted(s["name"] for s in stops)
    assert plan["length_km"] == pytest.approx(polygon_perimeter(40), abs=1e-5)
    assert plan["first_guess_km"] >= plan["length_km"]


def test_improve_route_streams_progress_then_the_final_tour(served: EmbeddedRuntime) -> None:
    stops = stops_json(scattered(50, seed=9))
    job = served.submit("improve_route", {"stops": stops, "iterations": 6000, "report_every": 2000, "seed": 1})
    kind, items = answer(served, job)
    assert kind == "ok", items
    assert [i["iteration"] for i in items] == [2000, 4000, 6000]
    assert [i["final"] for i in items] == [False, False, True] and not items[-1]["stopped_early"]
    lengths = [i["length_km"] for i in items]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(items[-1]["order"]) == sorted(s["name"] for s in stops)
    assert served.record.result_posts(job)[-1].chunked
    _kind, plan = answer(served, served.submit("plan_route", {"stops": stops}))
    assert lengths[0] <= plan["length_km"]  # it starts from plan_route's tour and keeps the best


def test_coverage_takes_a_typed_dict_and_estimates_the_covered_share(served: EmbeddedRuntime) -> None:
    query = {"depots": [{"name": "hub", "x_km": 20.0, "y_km": 20.0}], "radius_km": 5.0, "width_km": 40.0,
             "height_km": 40.0, "samples": 50_000, "seed": 3}
    kind, estimate = answer(served, served.submit("coverage", query))
    assert kind == "ok", estimate
    assert abs(estimate["fraction"] - math.pi * 25 / 1600) < 5 * estimate["standard_error"]
    assert estimate["covered_km2"] == pytest.approx(estimate["fraction"] * 1600, abs=1e-3)


def test_a_query_that_does_not_fit_the_types_is_answered_invalid_input(served: EmbeddedRuntime) -> None:
    kind, payload = answer(served, served.submit("plan_route", {"stops": [{"name": "a", "x_km": 1.0}]}))
    assert kind == "invalid_input" and "y_km" in payload["error"]


def test_an_error_in_the_function_is_answered_with_its_exception(served: EmbeddedRuntime) -> None:
    stops = stops_json([(0, 0), (1, 1)])
    kind, payload = answer(served, served.submit("plan_route", {"stops": stops, "start": "nowhere"}))
    assert kind == "exception" and payload["type"] == "ValueError" and "nowhere" in payload["exception"]


def test_improve_route_sends_its_best_tour_when_the_soft_timeout_fires(tmp_path: Path) -> None:
    """The example's own limits, with improve_route's soft timeout cut short: the work done is not lost."""
    config = (APP_DIR / "cmworker.toml").read_text()
    table = '[functions.improve_route]     # streaming; on its soft timeout it sends the best tour found so far\n'
    assert table in config
    config = config.replace(table + 'timeout = "10m"\nsoft_timeout = "9m"\n',
                            table + 'timeout = "20s"\nsoft_timeout = "500ms"\n')
    assert 'soft_timeout = "500ms"' in config
    for name in ("app.py", "routing.py"):
        shutil.copy2(APP_DIR / name, tmp_path / name)
    (tmp_path / "cmworker.toml").write_text(config)
    stops = stops_json(scattered(60, seed=2))
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=1) as rt, serving(rt, tmp_path):
        job = rt.submit("improve_route", {"stops": stops, "iterations": 10**9, "report_every": 20_000})
        kind, items = answer(rt, job)
    items = items if isinstance(items, list) else [items]
    assert kind == "ok", items
    final = items[-1]
    assert final["final"] and final["stopped_early"]
    assert sorted(final["order"]) == sorted(s["name"] for s in stops)


def test_the_example_config_sets_limits_per_function() -> None:
    """`cmworker config` in the example's directory: each function's limits come from its own table."""
    done = subprocess.run([sys.executable, "-m", "cmworker", "config"], cwd=APP_DIR, capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    sections = {}
    for block in done.stdout.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("[functions."):
            sections[lines[0].strip("[]").removeprefix("functions.")] = {
                line.split("=")[0].strip(): line.split("=")[1].split("#")[0].strip() for line in lines[1:]}
    assert sections["route_length"] == {"timeout": '"10s"', "soft_timeout": '"none"', "memory_limit": '"256MiB"'}
    assert sections["plan_route"]["memory_limit"] == '"1GiB"'
    assert sections["improve_route"]["timeout"] == '"10m"'


def test_cmworker_dev_and_call_as_the_readme_shows(tmp_path: Path) -> None:
    env = {**os.environ, "CMWORKER_STATE_DIR": str(tmp_path)}
    dev = subprocess.Popen([sys.executable, "-m", "cmworker", "dev", "--workers", "1"], cwd=APP_DIR, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while not (tmp_path / "runtime.json").exists():
            assert dev.poll() is None and time.monotonic() < deadline, "cmworker dev did not announce itself"
            time.sleep(0.05)

        def call(function: str, payload: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cmworker", "call", function, payload, "--timeout", "60s"],
                                  env=env, capture_output=True, text=True, timeout=WAIT + 10)

        stops = json.dumps(stops_json([(0, 0), (3, 0), (3, 4)], prefix="stop-"))
        done = call("route_length", f'{{"stops": {stops}, "order": ["stop-0", "stop-1", "stop-2"]}}')
        assert (done.returncode, done.stdout.strip()) == (0, "12.0"), done.stderr
        bad = call("route_length", '{"stops": [], "order": ["nowhere"]}')
        assert bad.returncode == 1 and "ValueError" in bad.stderr
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            assert dev.wait(WAIT) == 0
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
