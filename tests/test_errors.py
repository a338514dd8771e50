"""hwcomp.errors.error_line: the one line of an exception that user-facing messages quote."""

import json

import pytest

from hwcomp.errors import error_line


def test_single_line_error_is_its_line():
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads("{x")
    assert error_line(info.value) == str(info.value)
    assert error_line(info.value, with_type=True) == f"JSONDecodeError: {info.value}"


def test_multi_line_tvm_error_gives_the_reason_not_the_traceback():
    e = RuntimeError("Traceback (most recent call last):\n  3: tvm::relax::Foo\n  2: bar\n"
                     "InternalError: Check failed: (n >= 0) is false: negative extent\n")
    assert error_line(e) == "InternalError: Check failed: (n >= 0) is false: negative extent"
    # a multi-line message without an error line: its first line, trailing colon dropped
    assert error_line(ValueError("bad archive:\n  member a\n  member b")) == "bad archive"


def test_empty_message_and_limit():
    assert error_line(KeyError()) == "KeyError"
    assert error_line("") == "(no message)" and error_line("a\nRuntimeError: b\n") == "RuntimeError: b"
    assert error_line(ValueError("x" * 500), limit=10) == "x" * 10
    assert error_line(ValueError("x" * 500)) == "x" * 500  # no cut unless asked (file paths)
