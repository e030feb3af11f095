"""Calls cmworker.main() at import, without the `if __name__ == "__main__":` guard."""

import cmworker


@cmworker.function
def noop(context, event):
    return None


cmworker.main()
