"""A pipeline loop that shows the module's secrets as careless code would, then returns: the job token
(as ``ctx.token()`` gives it, and as read from the ``BUILD2_TOKEN`` file by code that never asks
cmworker), ``CLIENT_SECRET`` or every source credential, as ``REDTEAM_HOW`` says (also from a worker of
an Executor), or raises with the token in its message. ``REDTEAM_NONCE`` marks its lines; the token is
also written to the file ``REDTEAM_OUT`` names, for a test that did not make it."""

import logging
import os
import sys
from pathlib import Path

import cmworker


@cmworker.pipeline
def main(ctx: cmworker.PipelineContext) -> None:
    n = os.environ["REDTEAM_NONCE"]
    how = os.environ.get("REDTEAM_HOW", "token")
    if os.environ.get("REDTEAM_OUT"):
        Path(os.environ["REDTEAM_OUT"]).write_text(ctx.token())
    if how == "token":
        print(n, "token:", ctx.token(), flush=True)
    elif how == "token_file":
        print(n, "token file:", Path(os.environ["BUILD2_TOKEN"]).read_text().strip(), flush=True)
    elif how == "client":
        print(n, "client secret:", os.environ["CLIENT_SECRET"], file=sys.stderr, flush=True)
    elif how == "sources":
        logging.getLogger("app").warning("%s sources: %s", n, Path(os.environ["SOURCE_CREDENTIALS"]).read_text())
    elif how == "executor":  # printed in a worker of the loop's Executor, relayed by the loop's process
        token = Path(os.environ["BUILD2_TOKEN"]).read_text().strip()
        with cmworker.Executor(max_workers=1) as pool:
            pool.submit(print, n, "executor:", token, flush=True).result()
    elif how == "raise":
        raise RuntimeError(f"{n} refused: {Path(os.environ['BUILD2_TOKEN']).read_text().strip()}")
    print(n, "done", flush=True)
