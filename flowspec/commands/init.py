"""`flowspec init [DIR] [--name NAME] [--schema-url URL] [--force]`"""
from __future__ import annotations

import os
import re
import sys

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
# file written → its template; the test file is named after the flow (test_NAME.py), so that
# pytest can collect the tests of several flows' folders in one session
FILES = {"flow.yaml": "flow.yaml.tmpl", "tasks.py": "tasks.py.tmpl", "test_flow.py": "test_flow.py.tmpl"}
SCHEMA_COPY = "flow.schema.json"


def starter_test_name(name: str) -> str:
    """`test_my_flow.py` for the flow `my-flow`: a module name pytest can import."""
    return "test_" + re.sub(r"\W", "_", name.lower()) + ".py"


def register(sub) -> None:
    p = sub.add_parser("init", help="start a flow: a commented flow.yaml, its task module and a test",
                       description="Write a starter flow into DIR (default: the current folder): a "
                                   "commented flow.yaml with the yaml-language-server modeline, tasks.py, "
                                   "test_NAME.py and a copy of the schema for editors. Existing files are "
                                   "never overwritten unless --force is given.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="folder to create the flow in")
    p.add_argument("--name", help="the flow's name (default: the folder's name)")
    p.add_argument("--schema-url", metavar="URL",
                   help="point the editor modeline at this schema URL or path instead of writing "
                        f"a copy of the schema as {SCHEMA_COPY}")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=main)


def main(args) -> int:
    from flowspec.errors import UsageError

    folder = os.path.abspath(args.dir)
    name = args.name if args.name is not None else _default_name(folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.' and '-', starting with a letter or digit")
    files = {"flow.yaml": FILES["flow.yaml"], "tasks.py": FILES["tasks.py"],
             starter_test_name(name): FILES["test_flow.py"]}
    if not args.schema_url:
        files[SCHEMA_COPY] = None
    clash = [f for f in files if os.path.exists(os.path.join(folder, f))]
    if clash and not args.force:
        raise UsageError(f"{args.dir}: {', '.join(clash)} already exist{'s' if len(clash) == 1 else ''}; "
                         "nothing was written", "choose another folder, or add --force to overwrite")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{args.dir}: is a file, not a folder; nothing was written",
                         "give a folder (it is created when missing), e.g. flowspec init my-flow")
    written: list[str] = []
    try:
        os.makedirs(folder, exist_ok=True)
        for target, template in files.items():
            with open(os.path.join(folder, target), "w", encoding="utf-8") as fh:
                fh.write(_content(template, name, args.schema_url or SCHEMA_COPY))
            written.append(target)
    except OSError as exc:
        where = exc.filename or folder
        done = f"; wrote only {', '.join(written)}" if written else "; nothing was written"
        raise UsageError(f"{args.dir}: cannot write {where} ({exc.strerror}){done}",
                         "choose a folder that you may write") from None
    _tell(args.dir, list(files))
    return 0


def _default_name(folder: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(folder)).strip("-._")
    return cleaned or "my-flow"


def _content(template: str | None, name: str, schema_ref: str) -> str:
    if template is None:  # the schema's copy
        from flowspec.commands.schema import schema_text

        return schema_text()
    with open(os.path.join(TEMPLATES, template), encoding="utf-8") as fh:
        text = fh.read()
    return text.replace("__FLOW_NAME__", _yaml_string(name) if template == "flow.yaml.tmpl" else name) \
               .replace("__TEST_FILE__", starter_test_name(name)).replace("__SCHEMA__", schema_ref)


def _yaml_string(name: str) -> str:
    """The name as a YAML scalar that reads back as this string (`1.0` or `yes` need quotes)."""
    import json

    import yaml

    return name if yaml.safe_load(name) == name else json.dumps(name)


def _tell(folder: str, written: list[str]) -> None:
    """What was written, and the commands to try next, with paths quoted for the shell."""
    from shlex import quote

    flow = quote(os.path.normpath(os.path.join(folder, "flow.yaml")))
    print(f"wrote {', '.join(quote(os.path.normpath(os.path.join(folder, f))) for f in written)}\n"
          f"next: flowspec validate --strict {flow}\n"
          f"      flowspec run {flow}\n"
          f"      python -m pytest {quote(os.path.normpath(folder))}", file=sys.stderr)
