"""An app whose import fails with a message quoting ``CLIENT_SECRET`` (careless configuration checking)."""

import os

raise RuntimeError(f"cannot connect with secret {os.environ.get('CLIENT_SECRET')!r}")
