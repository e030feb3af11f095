"""scripts/failures.py's app for the official SDK (foundry-compute-modules): the jobs of failures_work.py,
decorated for the SDK. Run as a script; MAX_CONCURRENT_TASKS sets its pool size."""

import failures_work as work
from compute_modules.annotations import function
from compute_modules.startup import start_compute_module


@function
def ok(context, event):
    return work.ok(event)


@function
def segfault(context, event):
    return work.segfault(event)


@function
def exit1(context, event):
    return work.exit1(event)


@function
def hang(context, event):
    return work.hang(event)


@function
def hog(context, event):
    return work.hog(event)


@function
def slow(context, event):
    return work.slow(event)


@function
def boom(context, event):
    return work.boom(event)


if __name__ == "__main__":
    start_compute_module()
