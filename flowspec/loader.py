"""YAML → plain data plus the position of every key and value.

A plain document (no anchor, alias, tag, merge key or duplicate key: nearly every spec) is built
in one pass from the parser's events, without positions; they are found when a diagnostic first
asks for one. Anything else is composed into PyYAML's node graph (safe loader, so no Python
objects are ever built), and `_Builder` turns nodes into dicts/lists/scalars while recording
marks per path. Doing the construction ourselves is what lets us refuse duplicate keys (PyYAML
keeps the last one), unknown tags such as `!!python/object`, and alias bombs (sizes are counted
on the node graph, where an alias is shared, before anything is expanded).
"""
from __future__ import annotations

import contextlib
import gc
import os

import yaml

from flowspec.diagnostics import Diagnostic

MAX_BYTES = 4 * 1024 * 1024  # a flow spec is a few KiB; this leaves room for large defaults
MAX_NODES = 200_000  # nodes that aliases may add; a billion-laughs document is far above it
MAX_DEPTH = 64  # nesting; deeper data is no flow spec, and would exhaust recursion further on

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}

Path = tuple  # a path into the data: keys (str) and indices (int)


class Document:
    """Loaded YAML: the data, and 1-based (line, column) of each path's key (`keys`) and value
    (`values`).

    A plain document (see _load_plain) is loaded without positions, which only a diagnostic
    needs: they are found by a second pass over the text when first asked for, so that a
    valid spec never pays for them."""

    def __init__(self, file: str, data: object, values: dict | None = None, keys: dict | None = None,
                 text: str = "") -> None:
        self.file, self.data, self.text = file, data, text
        self._values, self._keys = values, keys

    def __repr__(self) -> str:
        return f"Document(file={self.file!r}, data={self.data!r})"

    @property
    def values(self) -> dict:
        if self._values is None:
            self._find_positions()
        return self._values

    @property
    def keys(self) -> dict:
        if self._keys is None:
            self._find_positions()
        return self._keys

    def _find_positions(self) -> None:
        # Only a plain document comes without positions: the full path composes it without
        # fail, and its builder records every position on the way.
        with gc_paused():
            node = _compose(self.text)
            builder = _Builder(self.file)
            if node is not None:
                builder.build(node, ())
        self._values, self._keys = builder.values or {(): (1, 1)}, builder.keys

    def column_of(self, path: Path, offset: int) -> int:
        """Column of the character `offset` into the string at `path` (for a one-line scalar)."""
        line, col = self.mark(path)
        lines = self.__dict__.get("_lines")
        if lines is None:  # split once: a spec with thousands of bad references asks thousands of times
            lines = self.__dict__["_lines"] = self.text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        quote = src[col - 1:col]
        start = col - 1 + (1 if quote in ("'", '"') else 0)
        if src[start + offset:start + offset + 3] == "${{":
            return start + offset + 1
        # An offset inside an expression: the source must show the value's text up to it (a
        # one-line scalar; in single quotes a ' is written '').
        value = self.value_at(path)
        if isinstance(value, str) and 0 <= offset < len(value):
            head = value[:offset + 1].replace("'", "''") if quote == "'" else value[:offset + 1]
            if src.startswith(head, start):
                return start + len(head) - (2 if quote == "'" and value[offset] == "'" else 1) + 1
        return col

    def value_at(self, path: Path):
        """The loaded value at `path`, or None."""
        value = self.data
        for key in path:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    def mark(self, path: Path, prefer_key: bool = False) -> tuple[int, int]:
        """Position for a diagnostic at `path`; falls back to the closest known parent."""
        path = tuple(path)
        while True:
            if prefer_key and path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def diag(self, path: Path, message: str, hint: str | None = None, key: bool = False) -> Diagnostic:
        line, col = self.mark(path, prefer_key=key)
        return Diagnostic(self.file, line, col, format_path(path), message, hint)


def format_path(path: Path) -> str:
    """`('tasks', 'a', 'after', 0)` → `tasks.a.after[0]`; the root is `(root)`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection while a spec is loaded, compiled or formatted: that makes
    no reference cycles (what it drops, reference counting frees), and each full collection
    would walk every object made so far, the hundreds of thousands of nodes of a 10 000-task
    flow: a quarter to a half of the time. (compile --strict imports user code inside it: the
    pause ends when the compile does.)"""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class LoadError(Exception):
    """The document cannot be turned into data; carries diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics[0].message)
        self.diagnostics = diagnostics


def read_text(path: str) -> str:
    """Read a spec file, refusing oversized ones before reading them; CRLF and CR line ends become LF."""
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise LoadError([Diagnostic(path, 1, 1, "(root)",
                                    f"the file is {size} bytes; flowspec reads at most {MAX_BYTES}",
                                    "split large data out of the spec and pass it as a parameter file")])
    with open(path, "rb") as fh:
        raw = fh.read()
    return decode(raw, path).replace("\r\n", "\n").replace("\r", "\n")


def decode(raw: bytes, file: str) -> str:
    """UTF-8 bytes → text; a byte that is not UTF-8 is reported at its own line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        column = len(raw[start:exc.start].decode("utf-8", "replace")) + 1
        raise LoadError([Diagnostic(file, line, column, "(root)",
                                    f"the file is not UTF-8 text: byte 0x{raw[exc.start]:02X} ({exc.reason})",
                                    "save the file as UTF-8 (non-ASCII text is welcome, in UTF-8)")]) from None


def load_file(path: str) -> Document:
    return load_text(read_text(path), path)


def load_text(text: str, file: str = "<string>") -> Document:
    """Parse one YAML document into a Document, or raise LoadError with positioned diagnostics."""
    if len(text) > MAX_BYTES:
        raise LoadError([Diagnostic(file, 1, 1, "(root)", f"the document is larger than {MAX_BYTES} bytes")])
    try:
        return _load(text, file)
    except RecursionError:
        raise LoadError([Diagnostic(file, 1, 1, "(root)", f"the document nests deeper than {MAX_DEPTH} levels",
                                    "flatten the data")]) from None


def _load(text: str, file: str) -> Document:
    plain = _load_plain(text, file)
    if plain is not None:
        return plain
    try:
        deep = _too_deep(text)
        node = None if deep else _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise LoadError([Diagnostic(file, line, col, "(root)", f"invalid YAML: {msg}", _tab_hint(text, line))]) from None
    except yaml.reader.ReaderError as exc:
        raise LoadError([_reader_diagnostic(text, file, exc)]) from None
    except yaml.YAMLError as exc:
        raise LoadError([Diagnostic(file, 1, 1, "(root)", f"invalid YAML: {exc}")]) from None
    if deep:
        raise LoadError([Diagnostic(file, deep.line + 1, deep.column + 1, "(root)",
                                    f"the document nests deeper than {MAX_DEPTH} levels", "flatten the data")])
    if node is None:
        return Document(file, None, {(): (1, 1)}, {}, text)
    builder = _Builder(file)
    # Aliases may add MAX_NODES to what is written out: a large flow without aliases (a chain of
    # 50 000 tasks) is never refused, an alias bomb always is.
    limit = MAX_NODES + _written_size(node)
    if _expanded_size(node, {}, limit) > limit:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raise LoadError([Diagnostic(file, line, col, "(root)",
                                    f"the document expands to more than {MAX_NODES} nodes through aliases",
                                    "this looks like an alias bomb; write the data out instead of nesting aliases")])
    data = builder.build(node, ())
    if builder.errors:
        raise LoadError(sorted(builder.errors, key=Diagnostic.sort_key))
    return Document(file, data, builder.values, builder.keys, text)


class _NotPlain(Exception):
    """The document needs the full path: an anchor, an alias, a tag, a merge key, a key that is
    not a string, a duplicate key, nesting too deep, or a YAML error."""


_STR, _TIMESTAMP, _MERGE = _TAG + "str", _TAG + "timestamp", _TAG + "merge"


def _load_plain(text: str, file: str) -> Document | None:
    """The common case in one pass: the data built straight from the parser's events, with an
    explicit stack (no recursion, no node graph, no second parse to measure depth) and no
    positions (Document finds them when a diagnostic first needs one). None when the document
    has anything else in it (see _NotPlain): `_load` then composes it and reports what is
    wrong, as before. A 10 000-task flow loads in a fifth of the time of the full path."""
    loader = _Loader(text)
    get_event, resolve, constructor = loader.get_event, loader.resolve, yaml.constructor.SafeConstructor()
    scalar_event, alias_event, sequence_start = yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    quoted: dict = {}  # text → (is it a string, value); keys and small values repeat a lot
    plain: dict = {}
    stack: list = []  # the collections open around `container`: (container, is_list, key)
    container = None  # the innermost open collection (None: at the top)
    is_list = False
    key = None  # the key of a mapping, waiting for its value
    root = None
    try:
        get_event()  # StreamStartEvent
        if loader.check_event(yaml.StreamEndEvent):
            return Document(file, None, {(): (1, 1)}, {}, text)
        get_event()  # DocumentStartEvent
        while True:
            event = get_event()
            kind = type(event)
            if kind is scalar_event:
                if event.anchor is not None or event.tag is not None and event.tag != "!":
                    raise _NotPlain()
                text_value = event.value
                cache = plain if event.implicit[0] else quoted
                cached = cache.get(text_value)
                if cached is None:
                    tag = resolve(yaml.ScalarNode, text_value, event.implicit)
                    if tag == _STR or tag == _TIMESTAMP:
                        cached = (True, text_value)
                    elif tag == _MERGE or tag not in _SCALAR_TAGS:
                        raise _NotPlain()
                    else:
                        cached = (False, constructor.construct_object(yaml.ScalarNode(tag, text_value), deep=True))
                    cache[text_value] = cached
                if is_list:
                    container.append(cached[1])
                elif key is not None:
                    container[key] = cached[1]
                    key = None
                elif container is None:  # a document that is one scalar
                    root = cached[1]
                    break
                elif not cached[0] or text_value in container:
                    raise _NotPlain()  # a key that is not a string, or a duplicate
                else:
                    key = text_value
                continue
            if kind in ends:
                if not stack:
                    root = container
                    break
                value = container
                container, is_list, key = stack.pop()
                if is_list:
                    container.append(value)
                else:
                    container[key] = value
                    key = None
                continue
            if kind is alias_event or event.anchor is not None or event.tag is not None and event.tag != "!":
                raise _NotPlain()
            if container is not None:
                if not is_list and key is None or len(stack) + 1 >= MAX_DEPTH:
                    raise _NotPlain()  # a collection as a key, or too deep: the full path says so
                stack.append((container, is_list, key))
            is_list = kind is sequence_start
            container, key = ([] if is_list else {}), None
        get_event()  # DocumentEndEvent
        if not loader.check_event(yaml.StreamEndEvent):
            raise _NotPlain()  # a second document: refused by the full path
    except (_NotPlain, yaml.YAMLError):
        return None
    finally:
        loader.dispose()
    return Document(file, root, None, None, text)


def _tab_hint(text: str, line: int) -> str | None:
    """YAML indents with spaces only: a tab in the indentation of the line at fault (or of the
    line before it, where an error is often reported one line late) gets a hint naming it."""
    lines = text.split("\n", line)
    for number in (line, line - 1):
        src = lines[number - 1] if 0 < number <= min(len(lines), line) else ""
        if "\t" in src[:len(src) - len(src.lstrip(" \t"))]:
            return f"line {number} is indented with a tab; YAML indents with spaces only: replace the tab with spaces"
    return None


def _reader_diagnostic(text: str, file: str, exc) -> Diagnostic:
    """A character YAML does not allow. libyaml reports a byte offset, so find the character
    itself: its first occurrence is the one reported, since an earlier one would have been."""
    char = exc.character if isinstance(exc.character, int) else ord(exc.character)
    i = max(text.find(chr(char)), 0)
    line, col = text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
    escape = f"\\x{char:02X}" if char < 0x100 else f"\\u{char:04X}"
    # flowspec's own words: libyaml and the pure-Python reader give different reasons
    kind = "a control character" if char < 0x20 or 0x7F <= char < 0xA0 else "a special character"
    return Diagnostic(file, line, col, "(root)", f"invalid YAML: character #x{char:04X} is not allowed ({kind})",
                      f"remove it, or write it as an escape ({escape}) inside a double-quoted string")


def _too_deep(text: str):
    """The mark of the first collection nested deeper than MAX_DEPTH, or None.

    libyaml's composer recurses in C once per level: some ten thousand levels down it crashes
    the interpreter, with no RecursionError to catch. The event stream has no recursion, so
    depth is measured there before anything is composed. Some libyaml builds refuse deep
    nesting themselves, and their scanner reads up to 1024 characters ahead of the events, so
    on one line of brackets their own error comes before level MAX_DEPTH is seen: when libyaml
    fails, the pure-Python scanner (no nesting limit, the same look-ahead, and no recursion
    either) says whether flowspec's limit was passed first. It stops at the first level too
    deep, and it runs only on libyaml's own nesting error, never on an ordinary syntax error."""
    try:
        return _first_too_deep(text, _Loader)
    except yaml.MarkedYAMLError as exc:
        said = f"{exc.context or ''} {exc.problem or ''}".lower()
        if _Loader is yaml.SafeLoader or not any(w in said for w in ("nest", "depth", "level", "maximum", "limit")):
            raise
        try:
            mark = _first_too_deep(text, yaml.SafeLoader)
        except yaml.YAMLError:
            mark = None
        if mark is None:
            raise
        return mark


def _first_too_deep(text: str, loader_class):
    loader = loader_class(text)
    depth = 0
    try:
        while not loader.check_event(yaml.StreamEndEvent):
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()
    return None


def _compose(text: str):
    loader = _Loader(text)
    try:
        node = loader.get_single_node()  # raises ComposerError on a second document
    finally:
        loader.dispose()
    return node


def _written_size(root) -> int:
    """Nodes of the graph as written, each anchored node once (an explicit stack: no recursion)."""
    seen, stack = {id(root)}, [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.CollectionNode):
            for child in (c for pair in node.value for c in pair) if isinstance(node, yaml.MappingNode) else node.value:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)
    return len(seen)


def _expanded_size(node, memo: dict, limit: int) -> int:
    """Node count with aliases expanded, computed on the shared graph (linear in its size; the
    recursion is bounded by MAX_DEPTH, checked before)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a recursive structure counts as too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, limit) + _expanded_size(v, memo, limit) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, limit) for v in node.value)
    else:
        size = 1
    memo[key] = min(size, limit + 1)
    return memo[key]


class _Builder:
    """Turns a composed node graph into data, recording marks and collecting errors."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict = {}
        self.keys: dict = {}
        self.errors: list[Diagnostic] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def error(self, node, path: Path, message: str, hint: str | None = None) -> None:
        m = node.start_mark
        self.errors.append(Diagnostic(self.file, m.line + 1, m.column + 1, format_path(path), message, hint))

    def build(self, node, path: Path):
        self.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if len(path) > MAX_DEPTH:
            self.error(node, path, f"the data nests deeper than {MAX_DEPTH} levels", "flatten the data")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, path, _TAG + "seq")
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _check_tag(self, node, path: Path, expected: str) -> bool:
        if node.tag == expected:
            return True
        shown = "!!" + node.tag[len(_TAG):] if node.tag.startswith(_TAG) else node.tag  # as the user wrote it
        self.error(node, path, f"unsupported YAML tag '{shown}'",
                   "flowspec reads plain YAML data only; remove the tag")
        return False

    def _scalar(self, node, path: Path):
        if node.tag not in _SCALAR_TAGS:
            self._check_tag(node, path, _TAG + "str")
            return node.value
        if node.tag in (_TAG + "str", _TAG + "timestamp"):
            return node.value  # timestamps stay strings: a date is rarely meant as a datetime here
        try:
            return self._scalars.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError):  # an explicit !!int/!!float/!!bool on other text
            self.error(node, path, f"invalid {node.tag.rpartition(':')[2]} value {node.value!r}",
                       "remove the tag, or write a value of that type")
            return node.value

    def _mapping(self, node, path: Path) -> dict:
        if not self._check_tag(node, path, _TAG + "map"):
            return {}
        out: dict = {}
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                self._merge(value_node, path, out)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (_TAG + "str",):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                self.error(key_node, path, f"mapping keys must be strings, found {shown!r}",
                           "quote the key, e.g. 'on': ..." if isinstance(key_node, yaml.ScalarNode) else None)
                continue
            key = key_node.value
            kmark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                first = seen[key]
                self.error(key_node, path + (key,), f"duplicate key '{key}' (first defined at line {first[0]})",
                           "remove one of the two; YAML would silently keep only the last")
                self.build(value_node, path + (key,))  # only for the errors inside it: all at once
                continue
            seen[key] = kmark
            self.keys[path + (key,)] = kmark
            out[key] = self.build(value_node, path + (key,))
        return out

    def _merge(self, value_node, path: Path, out: dict) -> None:
        """`<<: *base` merges keys that the mapping does not set itself."""
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for src in sources:
            if not isinstance(src, yaml.MappingNode):
                self.error(src, path, "a merge key '<<' takes a mapping or a list of mappings")
                continue
            merged = self._mapping(src, path)
            for key, value in merged.items():
                out.setdefault(key, value)
