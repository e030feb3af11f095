import sys

from cmworker.cli import main

sys.exit(main())
