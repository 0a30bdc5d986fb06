"""`flowspec kv set KEY VALUE|--file F|- | get KEY | list [PREFIX] | delete KEY [--backend URL] [--format text|json]`"""
from __future__ import annotations

import json
import sys

from flowspec.commands._backend import add_common, emit_json, open_from, read_file_option, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "kv", "JSON values kept in the backend between runs (watermarks); tasks use"
                          " `from flowspec import kv`, specs ${{ kv.KEY }}")
    p = actions.add_parser("set", help="store a value: VALUE is read as JSON; text that is not JSON is stored"
                           " as a string; `-` reads standard input")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", nargs="?", default=None)
    p.add_argument("--file", metavar="F", default=None, help="read the value from this file")
    add_common(p)
    p.set_defaults(func=main_set)
    p = actions.add_parser("get", help="print a key's value as JSON (exit 1 when it is missing)")
    p.add_argument("key", metavar="KEY")
    add_common(p)
    p.set_defaults(func=main_get)
    p = actions.add_parser("list", help="the keys (starting with PREFIX) and their values")
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    add_common(p)
    p.set_defaults(func=main_list)
    p = actions.add_parser("delete", help="remove a key")
    p.add_argument("key", metavar="KEY")
    add_common(p)
    p.set_defaults(func=main_delete)


def _text(args) -> str:
    from flowspec.errors import UsageError

    if (args.value is None) == (args.file is None):
        raise UsageError("give the value as VALUE, `-` for standard input, or --file F (exactly one)",
                         hint="flowspec kv set watermark '\"2026-01-01\"'")
    if args.file is not None:
        return read_file_option(args.file)
    return sys.stdin.read() if args.value == "-" else args.value


def parse_value(text: str):
    """JSON when it parses as JSON, else the text itself (without one trailing newline)."""
    try:
        return json.loads(text)
    except ValueError:
        return text[:-1] if text.endswith("\n") else text


def _key(args) -> str:
    from flowspec.errors import UsageError

    if not args.key:
        raise UsageError("KEY cannot be empty")
    return args.key


def main_set(args) -> int:
    key, value = _key(args), parse_value(_text(args))
    with open_from(args) as backend:
        backend.kv_set(key, value)
    if args.format == "json":
        emit_json({"key": key, "value": value})
    else:
        print(f"kv '{key}' = {json.dumps(value, ensure_ascii=False)}")
    return 0


def main_get(args) -> int:
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        try:
            value = backend.kv_get(_key(args))
        except KeyError:
            raise FlowspecError(f"the KV store has no key '{args.key}'",
                                hint="see the keys with: flowspec kv list") from None
    print(json.dumps(value, ensure_ascii=False, indent=2 if args.format == "json" else None))
    return 0


def main_list(args) -> int:
    with open_from(args) as backend:
        items = backend.kv_items(args.prefix)
    if args.format == "json":
        emit_json([{"key": k, "value": v, "updated": u} for k, v, u in items])
    elif not items:
        print(f"no keys{f' starting with {args.prefix!r}' if args.prefix else ''}")
    else:
        rows = [(k, _short(json.dumps(v, ensure_ascii=False)), when(u)) for k, v, u in items]
        print(table(("KEY", "VALUE", "UPDATED"), rows))
    return 0


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def main_delete(args) -> int:
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        deleted = backend.kv_delete(_key(args))
    if not deleted:
        raise FlowspecError(f"the KV store has no key '{args.key}'", hint="see the keys with: flowspec kv list")
    if args.format == "json":
        emit_json({"key": args.key, "deleted": True})
    else:
        print(f"kv '{args.key}' deleted")
    return 0
