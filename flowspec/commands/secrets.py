"""`flowspec secrets set NAME [--file F] | list | delete NAME [--backend URL] [--format text|json]`

A value is read from standard input or a file, never from the command line (where `ps` and the
shell's history would show it)."""
from __future__ import annotations

import sys

from flowspec.commands._backend import add_common, emit_json, open_from, read_file_option, subcommands, table, when


def register(sub) -> None:
    actions = subcommands(sub, "secrets", "credentials kept encrypted in the backend ($FLOWSPEC_SECRETS_KEY);"
                          " specs read them as ${{ secrets.NAME }}")
    p = actions.add_parser("set", help="store a secret: its value from standard input or --file, never the"
                           " command line")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--file", metavar="F", default=None, help="read the value from this file (default: standard input)")
    add_common(p)
    p.set_defaults(func=main_set)
    p = actions.add_parser("list", help="the names of the stored secrets (never their values)")
    add_common(p)
    p.set_defaults(func=main_list)
    p = actions.add_parser("delete", help="remove a stored secret")
    p.add_argument("name", metavar="NAME")
    add_common(p)
    p.set_defaults(func=main_delete)


def _value(args) -> str:
    from flowspec.errors import UsageError

    if args.file is not None:
        text = read_file_option(args.file)
    else:
        if sys.stdin.isatty():
            print(f"value of secret {args.name} (end with Ctrl-D):", file=sys.stderr)
        text = sys.stdin.read()
    text = text[:-1] if text.endswith("\n") else text  # `echo` and editors add one
    if not text:
        raise UsageError(f"secret {args.name}: the value is empty",
                         hint=f"pipe it in: flowspec secrets set {args.name} < FILE, or give --file FILE")
    return text


def main_set(args) -> int:
    from flowspec import secrets

    name = secrets.check_name(args.name)
    token = secrets.encrypt(_value(args))  # refused without the key, before anything is stored
    with open_from(args) as backend:
        backend.secret_put(name, token)
    _say(args, {"name": name, "stored": True}, f"secret '{name}' stored (encrypted)")
    return 0


def main_list(args) -> int:
    with open_from(args) as backend:
        names = backend.secret_names()
    if args.format == "json":
        emit_json([{"name": n, "updated": u} for n, u in names])
    elif not names:
        print("no secrets stored")
    else:
        print(table(("NAME", "UPDATED"), [(n, when(u)) for n, u in names]))
    return 0


def main_delete(args) -> int:
    from flowspec.errors import FlowspecError

    with open_from(args) as backend:
        deleted = backend.secret_delete(args.name)
    if not deleted:
        raise FlowspecError(f"no secret '{args.name}' is stored", hint="see the names with: flowspec secrets list")
    _say(args, {"name": args.name, "deleted": True}, f"secret '{args.name}' deleted")
    return 0


def _say(args, data: dict, text: str) -> None:
    if args.format == "json":
        emit_json(data)
    else:
        print(text)
