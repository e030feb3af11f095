"""A delivery-planning compute module: CPU-heavy route and coverage maths behind typed functions.

Functions (limits for each are in cmworker.toml next to this file):

* ``route_length``   the length of a given visiting order: cheap, tight timeout.
* ``plan_route``     nearest-neighbour tour improved by 2-opt: O(n²) per pass, seconds for a few
                     hundred stops.
* ``improve_route``  streaming: simulated annealing from plan_route's tour, reporting the best length as
                     it goes; when its soft timeout fires it sends the best tour found instead of losing it.
* ``coverage``       Monte Carlo estimate of the share of an area within reach of a set of depots.

Inputs are dataclasses and TypedDicts, so callers in Foundry see a typed signature and a malformed
query is answered ``invalid_input`` naming the field, before any maths runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict

import routing

import cmworker
from cmworker import Context


@dataclass
class Stop:
    name: str
    x_km: float
    y_km: float


@dataclass
class RouteRequest:
    """Visit every stop once and come back; ``start`` names the depot (default: the first stop)."""

    stops: list[Stop]
    start: str | None = None
    max_passes: int = 50


@dataclass
class RoutePlan:
    order: list[str]
    length_km: float
    first_guess_km: float
    passes: int


@dataclass
class LengthQuery:
    stops: list[Stop]
    order: list[str]


@dataclass
class AnnealRequest:
    stops: list[Stop]
    iterations: int = 20000
    report_every: int = 2000
    seed: int = 0
    start: str | None = None


@dataclass
class AnnealProgress:
    iteration: int
    length_km: float
    order: list[str] | None = None
    final: bool = False
    stopped_early: bool = False


class Depot(TypedDict):
    name: str
    x_km: float
    y_km: float


class _Area(TypedDict):
    depots: list[Depot]
    radius_km: float
    width_km: float
    height_km: float


class CoverageQuery(_Area, total=False):
    """The area to cover; ``samples`` (default 200,000) and ``seed`` (default 0) are optional."""

    samples: int
    seed: int


class CoverageEstimate(TypedDict):
    fraction: float
    standard_error: float
    samples: int
    covered_km2: float


def _index(stops: list[Stop], start: str | None) -> tuple[list[list[float]], int]:
    if len({s.name for s in stops}) != len(stops):
        raise ValueError("stop names must be unique")
    names = [s.name for s in stops]
    if start is not None and start not in names:
        raise ValueError(f"start {start!r} is not one of the stops")
    dist = routing.distance_matrix([(s.x_km, s.y_km) for s in stops])
    return dist, names.index(start) if start is not None else 0


@cmworker.function
def route_length(context: Context, event: LengthQuery) -> float:
    """Length in km of visiting ``order`` (stop names) and returning to the first one."""
    position = {s.name: i for i, s in enumerate(event.stops)}
    unknown = [name for name in event.order if name not in position]
    if unknown:
        raise ValueError(f"unknown stops in order: {', '.join(unknown)}")
    dist, _ = _index(event.stops, None)
    return round(routing.tour_length([position[name] for name in event.order], dist), 6)


@cmworker.function
def plan_route(context: Context, event: RouteRequest) -> RoutePlan:
    """A short closed tour through every stop, starting and ending at ``start``."""
    if not event.stops:
        return RoutePlan([], 0.0, 0.0, 0)
    dist, start = _index(event.stops, event.start)
    first = routing.nearest_neighbour(dist, start)
    order, passes = routing.two_opt(first, dist, max_passes=event.max_passes)
    return RoutePlan(order=[event.stops[i].name for i in order],
                     length_km=round(routing.tour_length(order, dist), 6),
                     first_guess_km=round(routing.tour_length(first, dist), 6), passes=passes)


@cmworker.function(streaming=True)
def improve_route(context: Context, event: AnnealRequest) -> Iterator[AnnealProgress]:
    """Anneal from ``plan_route``'s tour, yielding the length of the best tour so far every ``report_every`` steps.

    The last item has ``final: true``. When the soft timeout fires first, the best tour found is still
    sent as the final item (``stopped_early: true``) rather than lost.
    """
    if event.report_every < 1 or event.iterations < 1:
        raise ValueError("iterations and report_every must be at least 1")
    dist, start = _index(event.stops, event.start)
    names = [s.name for s in event.stops]
    best, _passes = routing.two_opt(routing.nearest_neighbour(dist, start), dist)  # what plan_route returns
    best_length = routing.tour_length(best, dist)
    # Warm enough to climb out of 2-opt's local optimum, cool enough not to wander far from it.
    temperature = 0.3 * best_length / max(len(best), 1)
    iteration = 0
    try:
        for step in routing.anneal(best, dist, event.iterations, seed=event.seed,
                                   report_every=event.report_every, start_temperature=temperature):
            iteration, best, best_length = step.iteration, step.order, step.length
            if step.iteration < event.iterations:
                yield AnnealProgress(step.iteration, round(step.length, 6))
    except cmworker.JobTimeout:
        yield AnnealProgress(iteration, round(best_length, 6), [names[i] for i in best], final=True,
                             stopped_early=True)
        return
    yield AnnealProgress(iteration, round(best_length, 6), [names[i] for i in best], final=True)


@cmworker.function
def coverage(context: Context, event: CoverageQuery) -> CoverageEstimate:
    """Share (and km²) of a ``width_km`` x ``height_km`` area within ``radius_km`` of at least one depot."""
    estimate = routing.coverage([(d["x_km"], d["y_km"]) for d in event["depots"]], event["radius_km"],
                                event["width_km"], event["height_km"], samples=event.get("samples", 200_000),
                                seed=event.get("seed", 0))
    area = event["width_km"] * event["height_km"]
    return CoverageEstimate(fraction=round(estimate.fraction, 6),
                            standard_error=round(estimate.standard_error, 6),
                            samples=estimate.samples, covered_km2=round(estimate.fraction * area, 3))
