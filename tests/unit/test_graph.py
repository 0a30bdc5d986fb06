"""The task graph as Mermaid and dot text, and pictures through the real Graphviz."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flowspec.compile import compile_file
from flowspec.errors import UsageError
from flowspec.graph import dot, mermaid, render

SPEC = """\
version: 1
name: shapes
tasks:
  fetch:
    run: m:fetch
  each:
    run: m:each
    map:
      item: ${{ tasks.fetch }}
  again:
    run: m:again
    map:
      value: ${{ tasks.each }}
  report:
    run: m:report
    with:
      values: ${{ tasks.again }}
    after: [fetch]
    trigger: all_finished
"""


@pytest.fixture
def spec(tmp_path: Path):
    path = tmp_path / "flow.yaml"
    path.write_text(SPEC)
    compiled, diags = compile_file(str(path))
    assert not diags
    return compiled


def test_mermaid_draws_mapped_tasks_as_stacks_and_each_kind_of_edge(spec):
    assert mermaid(spec) == """\
flowchart LR
    t0["fetch"]
    t1[["each<br/>map item ← tasks.fetch"]]
    t2[["again<br/>map value ← tasks.each"]]
    t3["report<br/>trigger: all_finished"]
    t0 --> t1
    t1 ==>|per child| t2
    t2 --> t3
    t0 -.->|after| t3
    classDef mapped stroke-width:3px
    class t1,t2 mapped
"""


def test_dot_text(spec):
    text = dot(spec)
    assert '"each" [label="each\\nmap item ← tasks.fetch", shape=box3d, style=solid];' in text
    assert '"each" -> "again" [style=bold, label="per child"];' in text
    assert '"fetch" -> "report" [style=dashed, label="after"];' in text
    assert '"fetch" -> "each";' in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` is not installed (apt-get install graphviz)")
def test_graphviz_draws_svg_and_png(spec):
    svg = render(spec, "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<title>each</title>" in svg and "per child" in svg
    assert render(spec, "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_without_graphviz_the_error_names_the_package(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without `dot`
    with pytest.raises(UsageError) as info:
        render(spec, "svg")
    assert "Graphviz" in info.value.message and "graphviz" in info.value.hint
    assert render(spec, "mermaid").startswith(b"flowchart")  # text formats need nothing
