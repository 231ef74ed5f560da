"""errors.first_line: the line of an error message that says what happened."""
import mxnet as mx
import pytest

from pfc_mx.errors import first_line


def test_plain_message_keeps_its_first_line():
    assert first_line(ValueError("bad value\nmore detail")) == "bad value"


def test_mxnet_traceback_gives_the_last_line_without_prefix():
    e = mx.base.MXNetError("Traceback (most recent call last):\n  File \"x.cc\", line 3\n"
                           "MXNetError: Check failed: fo->Write(...): No space left on device")
    assert first_line(e) == "Check failed: fo->Write(...): No space left on device"


def test_real_mxnet_error_names_the_failure(tmp_path):
    with pytest.raises(mx.base.MXNetError) as info:
        mx.nd.load(str(tmp_path / "missing.params"))
    line = first_line(info.value)
    assert "\n" not in line and not line.startswith("Traceback") and "MXNetError" not in line


def test_empty_message_gives_the_class_name():
    assert first_line(KeyError()) == "KeyError"
