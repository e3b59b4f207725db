"""Shared pieces of the benchmarks: timers, percentiles, machine facts and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def timings(call: Callable[[int], object], count: int, warmup: int = 20) -> np.ndarray:
    """Seconds taken by `call(i)` for i in range(count), after `warmup` untimed calls."""
    for i in range(warmup):
        call(i)
    samples = np.empty(count)
    for i in range(count):
        start = time.perf_counter()
        call(i)
        samples[i] = time.perf_counter() - start
    return samples


def summary_us(samples: np.ndarray) -> dict[str, float]:
    """Median, p99 and mean of `samples` (seconds) in microseconds."""
    return {"p50_us": float(np.percentile(samples, 50) * 1e6),
            "p99_us": float(np.percentile(samples, 99) * 1e6),
            "mean_us": float(samples.mean() * 1e6), "count": len(samples)}


def median_of(call: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` timed calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average_1m": round(load[0], 2)}


def write_results(name: str, results: dict[str, Any], markdown: str,
                  out_dir: Path = DEFAULT_RESULTS) -> tuple[Path, Path]:
    """Writes `<name>.json` and `<name>.md` under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def publish(suite: str, argv: list[str] | None, results: dict[str, Any],
            to_markdown: Callable[[str], str], name: str, out_dir: Path) -> int:
    """Prints the suite's markdown (which names the command that produced it) and writes the
    result files; returns the exit status."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    markdown = to_markdown(f"python benches/{suite}.py {' '.join(args)}".strip())
    print(markdown)
    write_results(name, results, markdown, out_dir)
    return 0


def footer(r: dict[str, Any], command: str) -> str:
    """The closing line of a result file: the machine, how busy it was, the command."""
    return (f"Machine: {r['cpus']} CPUs ({r['machine']}), load average {r['load_average_1m']} "
            f"at the end. Produced by `{command}`.\n")
