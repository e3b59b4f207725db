"""`dpr bench training` (options: --help); the code is python/dpr/bench/training.py."""

import sys

from dpr.bench.training import main

if __name__ == "__main__":
    sys.exit(main())
