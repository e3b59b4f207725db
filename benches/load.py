"""`dpr bench load` (options: --help); the code is python/dpr/bench/load.py."""

import sys

from dpr.bench.load import main

if __name__ == "__main__":
    sys.exit(main())
