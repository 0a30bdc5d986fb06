"""`flowspec fmt`'s layout engine: key order, indentation, comments, and safety."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flowspec.fmt import FormatError, format_text

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*/flow.yaml"))

SHUFFLED = """\
# yaml-language-server: $schema=flow.schema.json
# A header comment stays on top.
tasks:
    # b comes first in the file and stays first: task order is the user's
    b:   # end of line on b
        trigger: all_finished
        timeout: 5s   # per attempt
        run: m:b
        after:
        - a
    a:
        with:
            x: [1, 2]
        run: m:a
name: shuffled
environment:
    labels: [dev]
    type: local
version: 1
parameters:
    p:
        default: 3
        description: A number.
        type: integer
# closing remark
"""

CANONICAL = """\
# yaml-language-server: $schema=flow.schema.json
# A header comment stays on top.
version: 1
name: shuffled
parameters:
  p:
    type: integer
    default: 3
    description: A number.
tasks:
  # b comes first in the file and stays first: task order is the user's
  b:   # end of line on b
    run: m:b
    after:
      - a
    timeout: 5s   # per attempt
    trigger: all_finished
  a:
    run: m:a
    with:
      x: [1, 2]
environment:
  type: local
  labels: [dev]
# closing remark
"""


def comments(text: str) -> list[str]:
    """Comments found independently of flowspec.fmt: '#' at a line start or after a space."""
    found = []
    for line in text.splitlines():
        m = re.search(r"(^|\s)(#.*)$", line)
        if m:
            found.append(m.group(2).strip())
    return sorted(found)


def test_keys_take_the_order_of_the_spec_reference_and_comments_move_with_them():
    assert format_text(SHUFFLED) == CANONICAL


def test_the_canonical_layout_is_a_fixed_point():
    assert format_text(CANONICAL) == CANONICAL


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_keep_every_comment_and_their_data_and_format_once(path: Path):
    text = path.read_text()
    once = format_text(text, str(path))
    assert comments(once) == comments(text)
    assert yaml.safe_load(once) == yaml.safe_load(text)
    assert format_text(once, str(path)) == once


def test_scalar_content_is_left_exactly_as_written():
    text = ('version: 1\nname: "two\n    # not a comment\n    lines"\ntasks:\n    a:\n        with:\n'
            '            script: |\n                # kept as text\n                echo   \n\n'
            '                done\n        run: m:f\n')
    out = format_text(text)
    assert yaml.safe_load(out) == yaml.safe_load(text)
    # The content keeps its 4 columns more than `script`, its trailing spaces and its blank line.
    assert "\n      script: |\n          # kept as text\n          echo   \n\n          done\n" in out
    assert out.index("run: m:f") < out.index("with:")


def test_indentless_sequences_and_deep_indents_become_two_spaces_per_level():
    text = "version: 1\nname: n\ntasks:\n      a:\n            run: m:f\n            after:\n            - b\n" \
           "      b:\n            run: m:g\n"
    assert format_text(text) == ("version: 1\nname: n\ntasks:\n  a:\n    run: m:f\n    after:\n      - b\n"
                                 "  b:\n    run: m:g\n")


def test_whitespace_is_tidied():
    text = "\n\nversion: 1   \nname: n\n\n\n\ntasks:\r\n  a:\r\n    run: m:f\n\n\n"
    assert format_text(text) == "version: 1\nname: n\n\ntasks:\n  a:\n    run: m:f\n"


def test_an_alias_is_never_moved_above_its_anchor():
    text = "tasks:\n    a:\n        run: m:f\n        with: &args\n            x: 1\nparameters:\n    p:\n" \
           "        default: *args\nversion: 1\nname: n\n"
    out = format_text(text)  # reordering would put parameters (the alias) above tasks (the anchor)
    assert yaml.safe_load(out) == yaml.safe_load(text)
    assert out.index("&args") < out.index("*args")
    assert "\n  a:\n    run: m:f\n" in out  # still reindented


def test_a_file_that_is_not_yaml_is_reported_with_its_position():
    with pytest.raises(FormatError) as info:
        format_text("version: 1\ntasks: [a\nname: x\n", "bad.yaml")
    (diag,) = info.value.diagnostics
    assert (diag.file, diag.line) == ("bad.yaml", 3)
    assert "invalid YAML" in diag.message


def test_unknown_keys_go_after_the_known_ones_in_their_own_order():
    text = "zeta: 1\nname: n\nalpha: 2\nversion: 1\n"
    assert format_text(text) == "version: 1\nname: n\nzeta: 1\nalpha: 2\n"


def test_anchored_blocks_and_aliases_are_laid_out_where_they_are_written():
    text = ("version: 1\nname: n\nparameters:\n    base:\n        default: &d\n            deep: 1\n"
            "        type: object\ntasks:\n    a:\n        with:\n            l:\n            - *d\n        run: m:f\n")
    assert format_text(text) == ("version: 1\nname: n\nparameters:\n  base:\n    type: object\n    default: &d\n"
                                 "      deep: 1\ntasks:\n  a:\n    run: m:f\n    with:\n      l:\n        - *d\n")
