"""A layered layout of the task graph, computed on the server and drawn as SVG.

Layers by longest path from the sources (every edge points down at least one layer), order
within a layer by the barycenter of the neighbours in the layer above, then below, a few sweeps.
Linear in tasks and edges per sweep (plus a sort per layer).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 168, 46, 28, 54, 12
SWEEPS = 4


@dataclass(frozen=True)
class Placed:
    name: str
    x: float
    y: float
    layer: int


def layers(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layering (Kahn's order); nodes on a cycle, which a compiled spec never has,
    stay on layer 0."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for up, down in edges:
        if up in preds and down in preds:
            preds[down].append(up)
            succs[up].append(down)
    waiting = {n: len(preds[n]) for n in nodes}
    ready = [n for n in nodes if waiting[n] == 0]
    layer = {n: 0 for n in nodes}
    while ready:
        node = ready.pop()
        for down in succs[node]:
            layer[down] = max(layer[down], layer[node] + 1)
            waiting[down] -= 1
            if waiting[down] == 0:
                ready.append(down)
    return layer


def order(layer: dict[str, int], edges: Sequence[tuple[str, str]], nodes: Sequence[str]) -> list[list[str]]:
    """Nodes by layer, each layer ordered by barycenters (down then up sweeps)."""
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for n in nodes:  # first appearance order to start with
        rows[layer[n]].append(n)
    ups: dict[str, list[str]] = {n: [] for n in nodes}
    downs: dict[str, list[str]] = {n: [] for n in nodes}
    for up, down in edges:
        if up in ups and down in ups:
            downs[up].append(down)
            ups[down].append(up)
    for sweep in range(SWEEPS):
        neighbours, span = (ups, range(1, len(rows))) if sweep % 2 == 0 else (downs, range(len(rows) - 2, -1, -1))
        for i in span:
            ref = {n: k for k, n in enumerate(rows[i - 1 if sweep % 2 == 0 else i + 1])}
            here = {n: k for k, n in enumerate(rows[i])}

            def center(n: str) -> float:
                seen = [ref[m] for m in neighbours[n] if m in ref]
                return sum(seen) / len(seen) if seen else here[n]
            rows[i].sort(key=lambda n: (center(n), here[n]))
    return rows


def place(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[list[Placed], float, float]:
    """Every node's top-left corner, and the drawing's width and height; layers centred."""
    rows = order(layers(nodes, edges), edges, nodes)
    widest = max((len(r) for r in rows), default=0)
    width = MARGIN * 2 + widest * NODE_W + max(widest - 1, 0) * GAP_X
    placed = []
    for i, row in enumerate(rows):
        row_w = len(row) * NODE_W + max(len(row) - 1, 0) * GAP_X
        left = (width - row_w) / 2
        for k, name in enumerate(row):
            placed.append(Placed(name, left + k * (NODE_W + GAP_X), MARGIN + i * (NODE_H + GAP_Y), i))
    height = MARGIN * 2 + len(rows) * NODE_H + max(len(rows) - 1, 0) * GAP_Y
    return placed, width, height


def edge_paths(placed: Sequence[Placed], edges: Sequence[tuple[str, str, str]]) -> list[dict]:
    """A cubic curve from the bottom of each upstream node to the top of its downstream one."""
    at = {p.name: p for p in placed}
    out = []
    for up, down, kind in edges:
        if up not in at or down not in at:
            continue
        a, b = at[up], at[down]
        x1, y1, x2, y2 = a.x + NODE_W / 2, a.y + NODE_H, b.x + NODE_W / 2, b.y
        mid = (y1 + y2) / 2
        out.append({"d": f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}",
                    "kind": kind, "up": up, "down": down})
    return out
