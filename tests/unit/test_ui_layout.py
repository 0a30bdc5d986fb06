"""The task graph's layered layout: longest-path layers, barycenter order, linear in size."""
from __future__ import annotations

import time

from flowspec.ui.layout import layers, order, place


def test_every_edge_points_down_and_layers_are_longest_paths():
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("x", "d")]
    layer = layers(["a", "b", "c", "d", "x"], edges)
    assert layer == {"a": 0, "b": 1, "c": 2, "d": 3, "x": 0}


def test_barycenters_untangle_crossed_edges():
    # a1→b2 and a2→b1 cross in first-seen order; one sweep puts b2 under a1
    rows = order({"a1": 0, "a2": 0, "b1": 1, "b2": 1}, [("a1", "b2"), ("a2", "b1")], ["a1", "a2", "b1", "b2"])
    assert rows == [["a1", "a2"], ["b2", "b1"]]


def test_nodes_do_not_overlap_and_a_wide_map_stays_fast():
    names = ["src"] + [f"t{i}" for i in range(3000)] + ["sink"]
    edges = [("src", f"t{i}") for i in range(3000)] + [(f"t{i}", "sink") for i in range(3000)]
    started = time.perf_counter()
    placed, width, height = place(names, edges)
    assert time.perf_counter() - started < 2.0
    spots = {(p.x, p.y) for p in placed}
    assert len(spots) == len(names)
    assert all(0 <= p.x <= width and 0 <= p.y <= height for p in placed)
