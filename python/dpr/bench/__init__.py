"""Benchmarks behind `dpr bench SUITE ...` (and the scripts in `benches/`).

Suites: latency (Python API vs PyTorch eager), throughput (query_batch), retrieval (exact vs
HNSW vs hnswlib), load (a 1M-item bundle), training (seconds per epoch per stage). Each prints
a markdown table and writes `<name>.json` and `<name>.md` under `benches/results/`. They need
the `train` and `dev` extras (torch, hnswlib, matplotlib).
"""

SUITES = ("latency", "throughput", "retrieval", "load", "training")
