"""The pieces of ``scripts/bench_pool.py``, one room per role.

    peers.py     the pools under test (cmworker and four peers) and two floor references, one interface
    probes.py    instruments: process-exit watcher (pidfds), pool-strength polling, CPU, percentiles
    sections.py  the six measurements of the pools, each returning raw samples
    executors.py cmworker.Executor and the executors it stands in for, and their measurement
    report.py    targets, verdicts and the tables

The functions the workers run live apart, in ``scripts/bench_apps/noop_app.py``.
"""
