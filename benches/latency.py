"""`dpr bench latency` (options: --help); the code is python/dpr/bench/latency.py."""

import sys

from dpr.bench.latency import main

if __name__ == "__main__":
    sys.exit(main())
