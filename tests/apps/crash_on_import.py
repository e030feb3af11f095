import cmworker

raise RuntimeError("this app is broken at import time")


@cmworker.function
def never(context, event):
    return None
