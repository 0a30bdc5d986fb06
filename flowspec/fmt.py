"""`flowspec fmt`: one canonical layout for flow specs, every comment kept.

A load-and-dump round trip loses comments or leaves them at their old columns, so this works on
whole lines instead, guided by the positions PyYAML reports for every node:

1. reorder: each key moves with its block of lines (the comments just above it, its end-of-line
   comment, everything nested in it) into the key order of the flow.yaml reference (docs/flow-yaml.md);
2. reindent: block mappings and sequences get two spaces per level; a block shifts as a whole,
   so scalars, flow collections and comments inside it keep their relative layout;
3. tidy: no trailing spaces, at most one blank line in a row, one newline at the end.

The result is checked before it is used: the same data, and the same lines apart from
indentation and blank lines (so every comment is still there). A file whose layout cannot be
changed safely (say, anchors that reordering would put after their aliases) is reindented only,
or left as it is.
"""
from __future__ import annotations

import difflib

import yaml

from flowspec.loader import LoadError, gc_paused, load_text

INDENT = 2
TOP_ORDER = ("version", "name", "description", "project", "parameters", "tasks", "outputs", "timeout",
             "on_success", "on_failure", "executor", "storage", "environment")
TASK_ORDER = ("run", "description", "with", "map", "after", "retries", "retry_delay", "timeout", "trigger",
              "if", "run_name", "loop", "cleanup", "on_success", "on_failure", "on_retry")
PARAM_ORDER = ("type", "default", "description", "enum")
DRIVER_ORDER = ("type",)
DRIVERS = ("executor", "storage", "environment")


class FormatError(Exception):
    """The file cannot be formatted; carries the loader's positioned diagnostics when it is not YAML."""

    def __init__(self, message: str, diagnostics: list = ()) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)


def format_text(text: str, file: str = "<string>") -> str:
    """The canonical layout of a spec's text (raises FormatError when it is not valid YAML).
    A file written with CRLF line ends (most of its lines) keeps them."""
    crlf = text.count("\r\n") * 2 > text.count("\n")
    with gc_paused():  # three node graphs of a large spec: collections would walk them again and again
        out = _format(text.replace("\r\n", "\n").replace("\r", "\n"), file)
    return out.replace("\n", "\r\n") if crlf else out


def _format(text: str, file: str) -> str:
    if not text.strip():
        return ""
    try:
        data = load_text(text, file).data
    except LoadError as exc:
        raise FormatError(f"{file}: cannot format a file that is not valid YAML", exc.diagnostics) from None
    for steps in ((reorder, reindent, tidy), (reindent, tidy)):
        out = text
        try:
            for step in steps:
                out = step(out)
        except yaml.YAMLError:
            continue  # a step broke the YAML (say, an alias moved above its anchor)
        if _same(text, data, out, file):
            return out
    return text  # nothing safe to do: keep the user's layout rather than risk their data


def _same(before: str, data, after: str, file: str) -> bool:
    """Same data, and the same non-blank lines apart from indentation (so the same comments)."""
    try:
        if load_text(after, file).data != data:
            return False
    except LoadError:
        return False
    return _content_lines(before) == _content_lines(after)


def _content_lines(text: str) -> list[str]:
    return sorted(line.strip() for line in text.split("\n") if line.strip())


try:  # libyaml's parser under Python's composer (compose_node below): the same marks, a fifth of the time
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML without libyaml
    _CParser = None


class _LayoutLoader(*((yaml.composer.Composer, _CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver)
                      if _CParser is not None else (yaml.SafeLoader,))):
    """Composes nodes for their positions only (marks count characters, as str indexing does).
    An alias becomes a scalar where the alias is written; the usual node graph hands back the
    anchored node, positioned at the anchor."""

    def __init__(self, stream) -> None:
        if _CParser is None:
            return super().__init__(stream)
        _CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        yaml.composer.Composer.__init__(self)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            return yaml.ScalarNode("tag:yaml.org,2002:str", "*" + event.anchor, event.start_mark, event.end_mark)
        return super().compose_node(parent, index)


def _compose(text: str):
    return yaml.compose(text, Loader=_LayoutLoader)


def _start(node):
    """Where a block mapping really starts: its first key (an anchor or tag may come before)."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return node.value[0][0].start_mark
    return node.start_mark


def _is_block(node, kind=(yaml.MappingNode, yaml.SequenceNode)) -> bool:
    return isinstance(node, kind) and not node.flow_style


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


# -- 1. key order --------------------------------------------------------------------------------
def _key_order(path: tuple) -> tuple | None:
    """The canonical key order of the mapping at `path`; None keeps the user's order."""
    if path == ():
        return TOP_ORDER
    if len(path) == 2 and path[0] == "tasks":
        return TASK_ORDER
    if len(path) == 2 and path[0] == "parameters":
        return PARAM_ORDER
    return DRIVER_ORDER if path in {(d,) for d in DRIVERS} else None


def _descends(path: tuple) -> bool:
    """Is there a mapping to order at or below `path`?"""
    return _key_order(path) is not None or path in (("tasks",), ("parameters",))


def reorder(text: str) -> str:
    """Put keys in canonical order, each key moving with its comments and nested lines."""
    root = _compose(text)
    if not _is_block(root, yaml.MappingNode) or not root.value:
        return text
    lines = text.split("\n")
    end = _last_line(root) + 1  # what follows the last key (a closing comment, `...`) stays last
    return "\n".join(_region(lines, root, (), 0, end) + lines[end:])


def _region(lines: list[str], node, path: tuple, lo: int, hi: int) -> list[str]:
    """Lines [lo, hi) that hold the block mapping `node`, with its keys (and below) reordered."""
    entries = node.value
    key_lines = [k.start_mark.line for k, _ in entries]
    if not all(isinstance(k, yaml.ScalarNode) for k, _ in entries) or len(set(key_lines)) != len(key_lines):
        return lines[lo:hi]  # complex or same-line keys: leave this mapping alone
    # The root's first comments are the file's header (the editor modeline): they stay on top.
    starts = [key_lines[0] if path == () else _attach(lines, entries[0][0], lo)]
    starts += [_attach(lines, k, line) for (k, _), line in zip(entries[1:], key_lines)]
    ends = starts[1:] + [hi]
    chunks = []
    for (key, value), start, end in zip(entries, starts, ends):
        child = path + (key.value,)
        body = lines[start:end]
        if _descends(child) and _is_block(value, yaml.MappingNode) and value.value \
                and _start(value).line > key.start_mark.line:
            split = key.start_mark.line + 1
            body = lines[start:split] + _region(lines, value, child, split, end)
        chunks.append((key.value, body))
    order = _key_order(path)
    header = lines[lo:starts[0]]
    if order is None:
        return header + [line for _, body in chunks for line in body]
    return _reassemble(header, chunks, order)


def _attach(lines: list[str], key, floor: int) -> int:
    """First line of a key's block: the key, or the comment lines right above it."""
    line = key.start_mark.line
    while line - 1 >= floor and _is_comment(lines[line - 1]) and _indent(lines[line - 1]) <= key.start_mark.column:
        line -= 1
    return line


def _reassemble(header: list[str], chunks: list, order: tuple) -> list[str]:
    """Sort chunks by `order`; blank lines separating entries travel with the entry that
    followed them. A misspelt key sorts with the key it resembles, other unknown keys go last."""
    header, lead = _split_trailing_blanks(header)
    items = []
    for key, body in chunks:
        body, trailing = _split_trailing_blanks(body)
        items.append((key, lead, body))
        lead = trailing
    trailer = lead
    items.sort(key=lambda item: _rank(item[0], order))  # stable: ties keep their order
    return header + [line for _, lead, body in items for line in lead + body] + trailer


def _rank(key: str, order: tuple) -> int:
    if key in order:
        return order.index(key)
    close = difflib.get_close_matches(key, order, n=1, cutoff=0.75)
    return order.index(close[0]) if close else len(order)


def _split_trailing_blanks(lines: list[str]) -> tuple[list[str], list[str]]:
    n = len(lines)
    while n and not lines[n - 1].strip():
        n -= 1
    return lines[:n], lines[n:]


# -- 2. indentation ------------------------------------------------------------------------------
class _Layout:
    """Per line: the block collections that contain it (outermost first), as (column, shift)
    pairs, and whether it continues a multi-line scalar (its text is content, not layout)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.n = n = len(lines)
        self.chains: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.in_scalar = [False] * n

    def walk(self, node, shift: int, column: int | None = None) -> None:
        """Record `node`; `column` is its new column when it is a block that starts a line."""
        if isinstance(node, yaml.ScalarNode):
            for line in range(node.start_mark.line + 1, self._end(node)):
                self.in_scalar[line] = True
            return
        if _is_block(node):
            start = _start(node)
            start_column = self._explicit_key_column(start)
            if column is not None:
                shift = column - start_column
            for line in range(start.line, self._end(node)):
                self.chains[line].append((start_column, shift))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.walk(key, shift)
                starts_line = _is_block(value) and _start(value).line > key.start_mark.line
                self.walk(value, shift, key.start_mark.column + shift + INDENT if starts_line else None)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self.walk(item, shift)  # a collection in `- item` stays where the dash puts it

    def _explicit_key_column(self, mark) -> int:
        """The column of the `?` that comes before a first key written as an explicit key (`? a`):
        the mapping starts there, not at the key's text."""
        before = self.lines[mark.line][:mark.column].rstrip(" ") if mark.line < self.n else ""
        if before.endswith("?") and (len(before) == 1 or before[-2] in " -"):
            return len(before) - 1
        return mark.column

    def _end(self, node) -> int:
        """One past the last line of `node`, within the text: the empty value of an explicit key
        on the last line (`? key` with no newline) is marked on a line after the end."""
        return min(_last_line(node) + 1, self.n)

    def shift_of(self, lines: list[str], i: int) -> int:
        if self.in_scalar[i] or not _is_comment(lines[i]):
            return self.chains[i][-1][1] if self.chains[i] else 0
        # A comment line follows the deepest block around it that starts at or left of it.
        column = _indent(lines[i])
        around = self._chain_near(lines, i, -1) + self._chain_near(lines, i, 1)
        fits = [pair for pair in around if pair[0] <= column]
        return max(fits)[1] if fits else 0

    def _chain_near(self, lines: list[str], i: int, step: int) -> list[tuple[int, int]]:
        i += step
        while 0 <= i < len(lines) and (not lines[i].strip() or _is_comment(lines[i]) and not self.in_scalar[i]):
            i += step
        return self.chains[i] if 0 <= i < len(lines) else []


def _last_line(node) -> int:
    """The last line that holds part of `node` (PyYAML's end mark of a block may sit on the next one)."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _last_line(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _last_line(node.value[-1])
    end = node.end_mark
    return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line


def reindent(text: str) -> str:
    """Two spaces per level for block collections; everything inside a block moves with it."""
    root = _compose(text)
    if root is None:
        return text
    lines = text.split("\n")
    layout = _Layout(lines)
    layout.walk(root, 0, 0 if _is_block(root) else None)
    return "\n".join(_shift(line, layout.shift_of(lines, i)) if line.strip() else line
                     for i, line in enumerate(lines))


def _shift(line: str, by: int) -> str:
    if by >= 0:
        return " " * by + line
    return line[min(-by, _indent(line)):]


# -- 3. whitespace -------------------------------------------------------------------------------
def tidy(text: str) -> str:
    """No trailing spaces, no runs of blank lines, one final newline; scalar content untouched."""
    root = _compose(text)
    lines = text.split("\n")
    layout = _Layout(lines)
    if root is not None:
        layout.walk(root, 0)
    out: list[tuple[bool, str]] = []  # (is scalar content, line)
    for i, line in enumerate(lines):
        if layout.in_scalar[i]:
            out.append((True, line))
        elif line.strip() or (out and out[-1][1].strip()):
            out.append((False, line.rstrip()))
    while out and not out[-1][0] and not out[-1][1]:
        out.pop()
    return "\n".join(line for _, line in out) + "\n"
