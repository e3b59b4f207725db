"""`dpr bench throughput` (options: --help); the code is python/dpr/bench/throughput.py."""

import sys

from dpr.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
