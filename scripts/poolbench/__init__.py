"""The pieces of ``scripts/bench_pool.py``, one room per role.

    peers.py     the pools under test (cmworker and four peers) and two floor references, one interface
    probes.py    instruments: process-exit watcher (pidfds), pool-strength polling, CPU, percentiles
    sections.py  the six measurements, each returning raw samples
    report.py    targets, verdicts and the tables

The functions the workers run live apart, in ``scripts/bench_apps/noop_app.py``.
"""
