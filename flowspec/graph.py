"""The task graph of a flow: Mermaid or Graphviz dot text, and pictures drawn by Graphviz.

Mapped tasks are drawn as stacks (Mermaid's subroutine box, Graphviz's box3d) with what they map
over. Edges: a solid arrow passes results, a thick one passes them child by child (a mapped task
over a mapped task), a dashed one is an `after` ordering without data, a dotted one labelled
`if` feeds only a condition, and a dashed one labelled `||` is one branch of a merge (the task
runs when at least one of them succeeded).
"""
from __future__ import annotations

import shutil
import subprocess

from flowspec import references as refs
from flowspec.errors import FlowspecError, UsageError

FORMATS = ("mermaid", "dot", "png", "svg")
EXTENSIONS = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot", ".png": "png", ".svg": "svg"}


def edges(spec) -> list[tuple[str, str, str]]:
    """(upstream, downstream, kind) with kind `data`, `per_child`, `merge`, `condition` or `after`."""
    out = []
    for task in spec.tasks.values():
        per_child, data = set(task.per_child), set(task.data_upstream)  # sets: a task may wait for thousands
        merged = {name for group in task.merge for name in group}
        only_condition = set(task.condition_upstream) - _argument_tasks(task) if task.condition_upstream else ()
        for up in task.upstream:
            kind = "per_child" if up in per_child else "merge" if up in merged else \
                "condition" if up in only_condition else "data" if up in data else "after"
            out.append((up, task.name, kind))
    return out


def _argument_tasks(task) -> set[str]:
    """The tasks whose results a task's `with` and `map` take."""
    return {ref.name for section in (task.with_args, task.map_args) for _, ref in refs.iter_refs(dict(section))
            if ref.kind == "tasks"}


def label_lines(task) -> list[str]:
    """The task's name, then what it maps over and a trigger that is not the default."""
    lines = [task.name]
    for arg, value in task.map_args.items():
        source = value.path() if isinstance(value, refs.Ref) else f"{len(value)} items" \
            if isinstance(value, list) else "?"
        lines.append(f"map {arg} ← {source}")
    if task.trigger != "all_successful":
        lines.append(f"trigger: {task.trigger}")
    if task.condition is not None:
        lines.append(f"if {_condition_text(task.condition)}")
    if task.loop is not None:
        lines.append(f"loop ≤ {task.loop.max}")
    if task.cleanup:
        lines.append(f"cleanup: {task.cleanup}")
    return lines


def _condition_text(condition) -> str:
    text = condition.path() if isinstance(condition, refs.Ref) else getattr(condition, "text", str(condition))
    return text if len(text) <= 40 else text[:37] + "..."


def mermaid(spec) -> str:
    """A Mermaid flowchart (GitHub and many wikis draw it from a ```mermaid block)."""
    ids = {name: f"t{i}" for i, name in enumerate(spec.tasks)}
    out = ["flowchart LR"]
    for task in spec.tasks.values():
        text = "<br/>".join(line.replace('"', "#quot;") for line in label_lines(task))
        out.append(f'    {ids[task.name]}[["{text}"]]' if task.mapped else f'    {ids[task.name]}["{text}"]')
    arrows = {"data": "-->", "per_child": "==>|per child|", "after": "-.->|after|", "condition": "-.->|if|",
              "merge": "-.->|#124;#124;|"}
    out += [f"    {ids[up]} {arrows[kind]} {ids[down]}" for up, down, kind in edges(spec)]
    mapped = [ids[t.name] for t in spec.tasks.values() if t.mapped]
    if mapped:
        out.append("    classDef mapped stroke-width:3px")
        out.append(f"    class {','.join(mapped)} mapped")
    return "\n".join(out) + "\n"


def dot(spec) -> str:
    """Graphviz dot text."""
    def q(*lines: str) -> str:
        return '"' + "\\n".join(t.replace("\\", "\\\\").replace('"', '\\"') for t in lines) + '"'

    out = [f"digraph {q(_name(spec))} {{", "    rankdir=LR;",
           '    node [shape=box, style="rounded", fontname="Helvetica", fontsize=11];',
           '    edge [fontname="Helvetica", fontsize=9];']
    for task in spec.tasks.values():
        label = q(*label_lines(task))
        shape = ", shape=box3d, style=solid" if task.mapped else ""
        out.append(f"    {q(task.name)} [label={label}{shape}];")
    styles = {"data": "", "per_child": ' [style=bold, label="per child"]', "after": ' [style=dashed, label="after"]',
              "condition": ' [style=dotted, label="if"]', "merge": ' [style=dashed, label="||"]'}
    out += [f"    {q(up)} -> {q(down)}{styles[kind]};" for up, down, kind in edges(spec)]
    return "\n".join(out + ["}"]) + "\n"


def _name(spec) -> str:
    """The flow's name, with `${{ env.NAME }}` read when the variable is set (as written otherwise:
    a picture needs no variable)."""
    from flowspec.compile import resolve_env

    try:
        return resolve_env(spec, storage=False).name
    except (refs.ResolveError, AttributeError):
        return spec.name


def render(spec, fmt: str) -> bytes:
    """The graph in `fmt`; png and svg are drawn by Graphviz's `dot` program."""
    if fmt == "mermaid":
        return mermaid(spec).encode()
    if fmt == "dot":
        return dot(spec).encode()
    program = shutil.which("dot")
    if program is None:
        raise UsageError(f"--format {fmt} needs Graphviz, whose `dot` program is not on PATH",
                         "install the graphviz package (apt-get install graphviz, brew install graphviz, "
                         "conda install graphviz), or use --format mermaid or --format dot")
    done = subprocess.run([program, f"-T{fmt}"], input=dot(spec).encode(), capture_output=True, timeout=60)
    if done.returncode != 0:
        raise FlowspecError(f"Graphviz could not draw the graph: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
