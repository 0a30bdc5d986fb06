"""The loader's two paths: the one-pass build from the parser's events for plain documents, and
the full path (composed nodes) for anything else. Same data, same positions, same errors."""
from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from flowspec import loader

REPO = Path(__file__).resolve().parents[2]

PLAIN = [
    "", "# only a comment\n", "---\n", "plain\n", "[1, 2]\n", "{a: [1, {b: c}]}\n",
    "a: 1\nb: [1, 2.5, true, null, ~, '3', \"x\", 2001-01-01]\nc: {d: {e: [[], {}]}}\n",
    "- a\n- - b\n  - c\n", "a: yes\nb: 0x1F\nc: .inf\nd: -.5\ne: 1_000\nf: 1.0\ng: 'true'\n",
    "x: |\n  multi\n  line\ny: >\n  folded\n", "a:\n- b\n- c: [d]\n", "'': empty key\n",
]
FULL = ["a: &x 1\nb: *x\n", "a: !!int 3\n", "a: 1\na: 2\n", "1: a\n", "<<: {a: 1}\n", "--- 1\n--- 2\n",
        "a: b: c\n", "? [a]\n: b\n", "a: " + "[" * 70 + "]" * 70 + "\n", "a: !custom x\n"]


def _full(text: str):
    saved = loader._load_plain
    loader._load_plain = lambda text, file: None
    try:
        return loader.load_text(text, "flow.yaml")
    except loader.LoadError as exc:
        return [d.text() for d in exc.diagnostics]
    finally:
        loader._load_plain = saved


def _shown(doc) -> str:
    # repr tells True from 1 and 1.0 from 1, and keeps the order of keys
    return repr((doc.data, doc.values, doc.keys))


@pytest.mark.parametrize("text", PLAIN + [p.read_text() for p in sorted((REPO / "examples").rglob("*.yaml"))])
def test_a_plain_document_loads_the_same_on_both_paths(text):
    fast = loader._load_plain(text, "flow.yaml")
    full = _full(text)
    if fast is None:  # an example with something the one-pass build leaves to the full path
        return
    assert not isinstance(full, list), full
    assert _shown(fast) == _shown(full)


@pytest.mark.parametrize("text", FULL)
def test_anything_else_goes_the_full_way(text):
    assert loader._load_plain(text, "flow.yaml") is None
    try:
        via_load = loader.load_text(text, "flow.yaml")
    except loader.LoadError as exc:
        via_load = [d.text() for d in exc.diagnostics]
    full = _full(text)
    assert (via_load if isinstance(via_load, list) else _shown(via_load)) == (
        full if isinstance(full, list) else _shown(full))


def test_every_plain_example_takes_the_fast_path():
    examples = sorted((REPO / "examples").glob("*/flow.yaml"))
    assert examples and all(loader._load_plain(p.read_text(), str(p)) is not None for p in examples)


def test_loading_twice_the_tasks_takes_about_twice_the_time():
    def seconds(n: int) -> float:
        text = "version: 1\nname: x\ntasks:\n" + "".join(
            f"  t{i}: {{run: 'm:f', with: {{x: '${{{{ tasks.t{i - 1} }}}}'}}}}\n" for i in range(1, n))
        best = float("inf")
        for _ in range(3):
            gc.collect()
            with loader.gc_paused():  # as its callers load (compile_file, fmt): the loader's own cost
                t = time.perf_counter()
                loader.load_text(text)
                best = min(best, time.perf_counter() - t)
        return best

    seconds(500)
    small, large = seconds(3_000), seconds(12_000)
    assert large < 4 * 2.0 * small, (small, large)
