"""A pipeline-mode app: reads its resources and token, runs its records through an Executor (one of
them segfaults), and, as ``PIPELINE_MODE`` says, crashes once, crashes at every start, or ignores the
request to stop. It writes what it saw to files in ``PIPELINE_OUT`` for the test to read."""

import faulthandler
import json
import os
import time
from pathlib import Path

import requests

import cmworker

MODE = os.environ.get("PIPELINE_MODE", "normal")
log = cmworker.get_logger("pipeline_app")


def process(record):
    if record == "segfault":
        faulthandler._sigsegv()
    return record * 2


def _token_status(token: str) -> int:
    return requests.get(f"https://{os.environ['FOUNDRY_HOST']}/multipass/api/me",
                        headers={"Authorization": f"Bearer {token}"}, verify=os.environ["DEFAULT_CA_PATH"],
                        timeout=10).status_code


@cmworker.pipeline
def main(ctx: cmworker.PipelineContext) -> None:
    out = Path(os.environ["PIPELINE_OUT"])
    resources = {alias: [r.rid, r.branch] for alias, r in ctx.resources().items()}
    seen = {"resources": resources, "token_status": _token_status(ctx.token()), "pid": os.getpid()}
    if os.environ.get("SOURCE_CREDENTIALS"):
        seen["sources"] = json.loads(Path(os.environ["SOURCE_CREDENTIALS"]).read_text())
    (out / f"start-{ctx.attempt}.json").write_text(json.dumps(seen))
    log.info("loop_started", attempt=ctx.attempt)
    if MODE == "dumps_stack":  # as one looking into a slow loop does: the lines are its output
        faulthandler.dump_traceback()
        (out / "dumped").write_text("")
    if MODE == "crash_at_start":
        raise RuntimeError("cannot start")
    records = json.loads(os.environ.get("PIPELINE_RECORDS", "[]"))
    results = []
    with cmworker.Executor(max_workers=2) as pool:
        futures = [(record, pool.submit(process, record)) for record in records]
        for record, future in futures:
            try:
                results.append({"record": record, "value": future.result()})
            except cmworker.WorkerDied:
                results.append({"record": record, "error": "worker_died"})
        (out / f"results-{ctx.attempt}.json").write_text(json.dumps(results))
        if MODE == "crash_once" and ctx.attempt == 0:
            faulthandler._sigsegv()  # the loop itself dies
        while not ctx.wait(0.05):
            pass
        if MODE == "ignore_stop":
            (out / "ignoring").write_text("")
            while True:
                time.sleep(0.05)
    (out / "drained").write_text(str(ctx.attempt))
