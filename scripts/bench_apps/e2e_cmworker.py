"""scripts/bench_e2e.py's app for cmworker: the same six functions as e2e_sdk.py, decorated for cmworker."""

import e2e_work

import cmworker


@cmworker.function
def noop(context, event):
    return None


@cmworker.function
def spin(context, event):
    return e2e_work.spin_timed(event)


@cmworker.function
def echo(context, event):
    return event


@cmworker.function
def nap(context, event):
    return e2e_work.nap_timed(event)


@cmworker.function
def blob(context, event):
    return e2e_work.blob(event)


@cmworker.function(streaming=True)
def stream(context, event):
    yield from e2e_work.items(**event)
