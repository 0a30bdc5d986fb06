"""Micro-benchmark of the local result store: put and get of N small results (one file each).

    python benchmarks/results_store.py [N]

Prints µs per put and per get. The issue's target: persisting adds at most 20 µs per task run
at N = 100 000.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time

from flowspec.results import ResultStore


def main(n: int = 100_000) -> None:
    for write_behind in (False, True):
        root = tempfile.mkdtemp(prefix="flowspec-results-bench-")
        try:
            store = ResultStore.from_spec({"type": "local", "directory": root}, write_behind=write_behind)
            value = {"rows": 3, "name": "x"}
            t0 = time.perf_counter()
            for i in range(n):
                store.put("bench", "task", f"r{i}", value)
            t1 = time.perf_counter()
            store.flush()
            t2 = time.perf_counter()
            for i in range(n):
                store.get("bench", "task", f"r{i}")
            t3 = time.perf_counter()
            store.close()
            mode = "write-behind" if write_behind else "direct"
            print(f"N={n} {mode:>12}: put {1e6 * (t1 - t0) / n:.1f} µs/op in the caller,"
                  f" {1e6 * (t2 - t0) / n:.1f} µs/op until all are on disk; get {1e6 * (t3 - t2) / n:.1f} µs/op")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
