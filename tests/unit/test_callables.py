"""Importing the callables a spec names, and checking their signatures."""
from __future__ import annotations

import sys

import pytest

from flowspec.callables import (CallableError, add_import_path, load_callable, signature_problems,
                                takes_argument)

MODULE = '''
class Greeter:
    @staticmethod
    def hello(name):
        return f"hello {name}"

def greet(name, punctuation="!"):
    return name + punctuation

CONSTANT = 3
'''


def _error(target: str, base) -> CallableError:
    with pytest.raises(CallableError) as info:
        load_callable(target, str(base))
    return info.value


def test_module_file_and_dotted_attributes(flow):
    flow.write("fs_callables_mod.py", MODULE)
    flow.write("sub/code.py", MODULE)
    base = str(flow.path)
    assert load_callable("fs_callables_mod:greet", base)("a") == "a!"
    assert load_callable("sub/code.py:greet", base)("b", punctuation="?") == "b?"
    assert load_callable("fs_callables_mod:Greeter.hello", base)("c") == "hello c"
    assert sys.path[0] == base  # the spec's folder comes first on the import path


def test_the_same_file_is_imported_once_and_files_with_one_name_stay_apart(flow):
    flow.write("a/code.py", "VALUE = 'a'\ndef f():\n    return VALUE\n")
    flow.write("b/code.py", "VALUE = 'b'\ndef f():\n    return VALUE\n")
    base = str(flow.path)
    first = load_callable("a/code.py:f", base)
    assert first is load_callable("a/code.py:f", base)
    assert (first(), load_callable("b/code.py:f", base)()) == ("a", "b")


def test_missing_module_names_it_with_a_hint(flow):
    err = _error("fs_no_such_module:f", flow.path)
    assert err.message == "cannot import module 'fs_no_such_module': no module named 'fs_no_such_module'"
    assert err.hint == "put fs_no_such_module.py beside the spec, or install the package"


def test_missing_file_and_missing_attribute(flow):
    flow.write("code.py", MODULE)
    assert _error("nope.py:f", flow.path).message == (
        "file 'nope.py' not found (looked for nope.py relative to the spec's folder)")
    err = _error("code.py:gret", flow.path)
    assert (err.message, err.hint) == ("'code.py' has no attribute 'gret'", "did you mean 'greet'?")
    assert _error("code.py:CONSTANT", flow.path).message == "'code.py:CONSTANT' is not callable (it is a int)"


def test_a_module_that_fails_to_import_says_where(flow):
    flow.write("broken.py", "x = 1\nraise RuntimeError('no config')\n")
    flow.write("syntax.py", "def f(:\n    pass\n")
    assert _error("broken.py:f", flow.path).message == (
        "importing 'broken.py' failed: RuntimeError: no config (broken.py, line 2)")
    assert _error("syntax.py:f", flow.path).message.startswith("importing 'syntax.py' failed: invalid syntax")
    assert "syntax.py:f" not in sys.modules  # a failed import leaves nothing half-loaded behind


def test_a_module_importing_something_missing_is_not_called_missing_itself(flow):
    flow.write("fs_needs_missing.py", "import fs_surely_missing_dependency\n")
    err = _error("fs_needs_missing:f", flow.path)
    assert err.message.startswith("cannot import module 'fs_needs_missing': ModuleNotFoundError")


def _f(a, b=1, *, c, **kwargs):
    return a


def _g(a, /, b):
    return a


@pytest.mark.parametrize(("fn", "given", "problems"), [
    (_f, {"a", "c"}, []),
    (_f, {"a", "c", "anything"}, []),  # **kwargs takes any name
    (_f, {"b"}, ["missing required arguments: a, c"]),
    (_g, {"a", "b"}, ["argument 'a' is positional-only"]),
    (_g, {"b", "z"}, ["argument 'z' is not a parameter of it", "missing required argument: a"]),
    (len, {"x"}, ["argument 'x' is not a parameter of it", "missing required argument: obj"]),
])
def test_signature_problems(fn, given, problems):
    assert signature_problems(fn, given) == problems


def test_a_callable_without_a_signature_is_not_checked():
    assert signature_problems(max, {"anything"}) == []  # inspect finds no signature for max


def test_takes_argument():
    assert takes_argument(lambda run: None) and takes_argument(lambda *args: None)
    assert not takes_argument(lambda: None)


def test_add_import_path_moves_the_folder_to_the_front(monkeypatch):
    monkeypatch.setattr(sys, "path", ["x", "y", "z"])
    add_import_path("z")
    add_import_path("z")
    assert sys.path == ["z", "x", "y"]


def test_each_spec_folder_is_its_own_world(flow):
    flow.write("a/tasks.py", "import helper\n\ndef f():\n    return helper.NAME\n")
    flow.write("a/helper.py", "NAME = 'a'\n")
    flow.write("b/tasks.py", "import helper\n\ndef g():\n    return helper.NAME\n")
    flow.write("b/helper.py", "NAME = 'b'\n")
    a, b = str(flow.path / "a"), str(flow.path / "b")
    f = load_callable("tasks:f", a)
    assert load_callable("tasks:g", b)() == "b"  # not a's tasks, nor a's helper
    assert f() == "a" and a not in sys.path and sys.path[0] == b
    assert load_callable("tasks:f", a)() == "a"  # and back again


def test_leaving_a_world_keeps_installed_code_below_the_folder(flow):
    flow.write("site/fs_installed_below.py", "X = 1\n")
    flow.write("tasks.py", "import fs_installed_below\n\ndef f():\n    return fs_installed_below.X\n")
    flow.write("other/tasks.py", "def f():\n    return 2\n")
    sys.path.append(str(flow.path / "site"))  # an import root of its own, as a virtualenv is
    assert load_callable("tasks:f", str(flow.path))() == 1
    assert load_callable("tasks:f", str(flow.path / "other"))() == 2
    assert "fs_installed_below" in sys.modules and "tasks" in sys.modules
    assert sys.modules["tasks"].__file__ == str(flow.path / "other" / "tasks.py")


def test_a_module_that_exits_on_import_is_an_error(flow):
    flow.write("fs_exits.py", "import sys\nsys.exit('bye')\n")
    flow.write("fs_interrupts.py", "raise KeyboardInterrupt\n")
    err = _error("fs_exits:f", flow.path)
    assert err.message == "importing 'fs_exits' failed: SystemExit: bye (fs_exits.py, line 2)"
    assert "if __name__ ==" in err.hint
    assert _error("fs_interrupts.py:f", flow.path).message == (
        "importing 'fs_interrupts.py' failed: KeyboardInterrupt (fs_interrupts.py, line 1)")


def test_hook_problem():
    from flowspec.callables import hook_problem

    assert hook_problem(lambda: None) is None and hook_problem(lambda run: None) is None
    assert hook_problem(lambda *args: None) is None and hook_problem(lambda run, x=1: None) is None
    assert hook_problem(lambda a, b: None).endswith("but its signature is (a, b)")
    assert hook_problem(lambda **kw: None).endswith("but its signature is (**kw)")
    assert hook_problem(print) is None  # no signature to check


def test_leaving_a_world_never_forgets_flowspec_itself(flow, monkeypatch):
    # a spec at the top of flowspec's own source tree: flowspec modules imported while its world
    # lasted live under its folder, and must stay the same objects (one FlowspecError class)
    import os

    import flowspec

    top = os.path.dirname(os.path.dirname(flowspec.__file__))
    monkeypatch.delitem(sys.modules, "flowspec.drivers", raising=False)
    add_import_path(top)
    import flowspec.drivers as drivers  # imported during the world of the spec at `top`

    flow.write("other/tasks.py", "def f():\n    return 1\n")
    assert load_callable("tasks:f", str(flow.path / "other"))() == 1
    assert sys.modules["flowspec.drivers"] is drivers


def test_code_beside_the_spec_is_read_from_its_source_not_a_stale_pyc(flow, monkeypatch):
    # A .pyc is trusted when its source keeps its size and its mtime in whole seconds: an edit
    # within that second (a script between two registers) must still be the code that runs.
    import importlib.util
    import os
    import py_compile

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    module, package = "fs_stale_mod", "fs_stale_pkg"
    for rel in (f"{module}.py", f"{package}/__init__.py", f"{package}/inner.py"):
        source = flow.write(rel, "def factor():\n    return 2\n")
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))  # as a first import left it
        stamp = os.stat(source).st_mtime_ns
        source.write_text("def factor():\n    return 3\n")  # the same size
        os.utime(source, ns=(stamp, stamp))  # and the same second
    try:
        base = str(flow.path)
        assert load_callable(f"{module}:factor", base)() == 3
        assert load_callable(f"{package}.inner:factor", base)() == 3
        assert load_callable(f"{package}/inner.py:factor", base)() == 3
    finally:
        for name in (module, package, f"{package}.inner"):
            sys.modules.pop(name, None)
