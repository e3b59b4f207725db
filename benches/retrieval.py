"""`dpr bench retrieval` (options: --help); the code is python/dpr/bench/retrieval.py."""

import sys

from dpr.bench.retrieval import main

if __name__ == "__main__":
    sys.exit(main())
