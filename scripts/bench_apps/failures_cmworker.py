"""scripts/failures.py's app for cmworker: the jobs of failures_work.py, decorated for cmworker.
Its limits come from the cmworker.toml the script writes next to where it runs."""

import failures_work as work

import cmworker


@cmworker.function
def ok(context, event):
    return work.ok(event)


@cmworker.function
def segfault(context, event):
    return work.segfault(event)


@cmworker.function
def exit1(context, event):
    return work.exit1(event)


@cmworker.function
def hang(context, event):
    return work.hang(event)


@cmworker.function
def hog(context, event):
    return work.hog(event)


@cmworker.function
def slow(context, event):
    return work.slow(event)


@cmworker.function
def boom(context, event):
    return work.boom(event)
