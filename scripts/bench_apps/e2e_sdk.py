"""scripts/bench_e2e.py's app for the official SDK (foundry-compute-modules): the same six functions as
e2e_cmworker.py, decorated for the SDK. Run as a script; MAX_CONCURRENT_TASKS sets its pool size."""

import e2e_work
from compute_modules.annotations import function
from compute_modules.startup import start_compute_module


@function
def noop(context, event):
    return None


@function
def spin(context, event):
    return e2e_work.spin_timed(event)


@function
def echo(context, event):
    return event


@function
def nap(context, event):
    return e2e_work.nap_timed(event)


@function
def blob(context, event):
    return e2e_work.blob(event)


@function(streaming=True)
def stream(context, event):
    yield from e2e_work.items(**event)


if __name__ == "__main__":
    start_compute_module()
