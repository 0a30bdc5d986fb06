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
