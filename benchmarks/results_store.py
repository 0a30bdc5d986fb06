"""Micro-benchmark of the local result store: put and get of N small results.

    python benchmarks/results_store.py [N]

Three ways: keyed results (cache keys: one file each) written at once and written behind, and a
run's kept results (`persist`: written behind, gathered into packs). Prints µs per put in the
caller, per put until everything is on disk, and per get (a fresh store: what a restart reads).
The issue's target: persisting adds at most 20 µs per task run at N = 100 000 (judged on the
`--only results` row of benchmarks/cli.py, the whole `flowspec run`).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time

from flowspec.results import ResultStore, RunKey

RUN = "f" * 32


def main(n: int = 100_000) -> None:
    for mode in ("direct", "write-behind", "kept (packs)"):
        root = tempfile.mkdtemp(prefix="flowspec-results-bench-")
        try:
            spec = {"type": "local", "directory": root}
            store = ResultStore.from_spec(spec, write_behind=mode != "direct")
            key = (lambda i: RunKey(RUN, i)) if mode.startswith("kept") else (lambda i: f"r{i}")
            value = {"rows": 3, "name": "x"}
            t0 = time.perf_counter()
            for i in range(n):
                store.put("bench", "task", key(i), value)
            t1 = time.perf_counter()
            store.close()
            t2 = time.perf_counter()
            fresh = ResultStore.from_spec(spec)
            for i in range(n):
                fresh.get("bench", "task", key(i))
            t3 = time.perf_counter()
            print(f"N={n} {mode:>12}: put {1e6 * (t1 - t0) / n:.1f} µs/op in the caller,"
                  f" {1e6 * (t2 - t0) / n:.1f} µs/op until all are on disk; get {1e6 * (t3 - t2) / n:.1f} µs/op")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
