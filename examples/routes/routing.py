"""Route and coverage maths for the delivery-planning example, in plain Python (no cmworker, no NumPy).

Coordinates are planar kilometres (project latitude/longitude onto a local grid before calling). Every
function here is deterministic for a given input and seed, so the tests can pin its results.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Point = tuple[float, float]


def distance_matrix(points: Sequence[Point]) -> list[list[float]]:
    """Euclidean distances between every pair of points, in km."""
    return [[math.hypot(ax - bx, ay - by) for bx, by in points] for ax, ay in points]


def tour_length(order: Sequence[int], dist: Sequence[Sequence[float]], closed: bool = True) -> float:
    """Length of visiting ``order`` in turn; ``closed`` adds the leg back to the first stop."""
    if len(order) < 2:
        return 0.0
    total = sum(dist[a][b] for a, b in itertools.pairwise(order))
    return total + dist[order[-1]][order[0]] if closed else total


def nearest_neighbour(dist: Sequence[Sequence[float]], start: int = 0) -> list[int]:
    """A first tour: from ``start``, always drive to the closest stop not yet visited."""
    unvisited = set(range(len(dist))) - {start}
    order = [start]
    while unvisited:
        here = dist[order[-1]]
        nearest = min(unvisited, key=lambda j: (here[j], j))
        unvisited.remove(nearest)
        order.append(nearest)
    return order


def two_opt(order: list[int], dist: Sequence[Sequence[float]], max_passes: int = 50) -> tuple[list[int], int]:
    """Improve a closed tour by reversing segments while that shortens it; the first stop stays first.

    Returns the improved order and the number of passes made. Each pass is O(n²) edge-pair checks, which
    is where this example spends its CPU.
    """
    order = list(order)
    n = len(order)
    passes = 0
    improved = n > 3
    while improved and passes < max_passes:
        improved = False
        passes += 1
        for i in range(1, n - 1):
            a, b = order[i - 1], order[i]
            dist_a, ab = dist[a], dist[a][b]
            for j in range(i + 1, n):
                c, d = order[j], order[(j + 1) % n]
                delta = dist_a[c] + dist[b][d] - ab - dist[c][d]
                if delta < -1e-12:
                    order[i:j + 1] = reversed(order[i:j + 1])
                    b, ab = order[i], dist_a[order[i]]
                    improved = True
    return order, passes


@dataclass(frozen=True)
class AnnealStep:
    """A progress report of ``anneal``: the best tour found after ``iteration`` proposals."""

    iteration: int
    temperature: float
    length: float
    order: list[int]


def anneal(order: list[int], dist: Sequence[Sequence[float]], iterations: int, seed: int = 0,
           report_every: int = 1000, start_temperature: float | None = None) -> Iterator[AnnealStep]:
    """Simulated annealing over segment reversals (the first stop stays first), from ``order``.

    Yields the best tour so far every ``report_every`` proposals and once more at the end; the lengths
    yielded never increase. ``start_temperature`` defaults to the mean leg of the starting tour.
    """
    rng = random.Random(seed)
    n = len(order)
    current = list(order)
    length = tour_length(current, dist)
    best, best_length = list(current), length
    temperature = start_temperature if start_temperature is not None else length / max(n, 1)
    cooling = (1e-3) ** (1.0 / max(iterations, 1))  # ends at a thousandth of the start temperature
    for iteration in range(1, iterations + 1):
        if n > 3:
            i = rng.randrange(1, n - 1)
            j = rng.randrange(i + 1, n)
            a, b, c, d = current[i - 1], current[i], current[j], current[(j + 1) % n]
            delta = dist[a][c] + dist[b][d] - dist[a][b] - dist[c][d]
            if delta < 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):
                current[i:j + 1] = reversed(current[i:j + 1])
                length += delta
                if length < best_length - 1e-12:
                    best, best_length = list(current), length
        temperature *= cooling
        if iteration % report_every == 0 or iteration == iterations:
            yield AnnealStep(iteration, temperature, tour_length(best, dist), list(best))


@dataclass(frozen=True)
class Coverage:
    """A Monte Carlo estimate of the share of an area within reach of at least one site."""

    fraction: float
    standard_error: float
    samples: int


def coverage(sites: Sequence[Point], radius: float, width: float, height: float, samples: int,
             seed: int = 0) -> Coverage:
    """Share of the rectangle [0, width] x [0, height] within ``radius`` km of a site, by sampling.

    Sites are bucketed on a grid of ``radius``-sized cells, so each sample is checked against the sites
    of its own and the eight neighbouring cells only.
    """
    if samples < 1:
        raise ValueError("samples must be at least 1")
    if radius <= 0 or width <= 0 or height <= 0:
        raise ValueError("radius, width and height must be positive")
    cells: dict[tuple[int, int], list[Point]] = {}
    for x, y in sites:
        cells.setdefault((math.floor(x / radius), math.floor(y / radius)), []).append((x, y))
    neighbourhood = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    r2 = radius * radius
    rng = random.Random(seed)
    hits = 0
    for _ in range(samples):
        x, y = rng.random() * width, rng.random() * height
        cx, cy = math.floor(x / radius), math.floor(y / radius)
        if any((x - sx) ** 2 + (y - sy) ** 2 <= r2
               for dx, dy in neighbourhood for sx, sy in cells.get((cx + dx, cy + dy), ())):
            hits += 1
    p = hits / samples
    return Coverage(p, math.sqrt(p * (1 - p) / samples), samples)
