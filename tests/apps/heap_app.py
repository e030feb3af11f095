"""Jobs that allocate and free big buffers (tests/test_heap.py)."""

import cmworker


@cmworker.function
def blob(context, event) -> int:
    """Build and drop ``mb`` MB in a few buffers below glibc's largest mmap threshold, as a big job's JSON
    parsing and encoding do."""
    parts = [bytearray(b"x" * (event["mb"] * 10**6 // 4)) for _ in range(4)]
    return sum(len(p) for p in parts)


@cmworker.function(memory_limit="200MiB")
def bounded(context, event) -> int:
    block = bytearray(event["mb"] * 10**6)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)
