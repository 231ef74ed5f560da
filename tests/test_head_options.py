"""The head's option rules: one source for PartialFC and the config, loaded without MXNet."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pfc_mx.config import build_config
from pfc_mx.errors import ConfigError
from pfc_mx.head import options

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("section, key, bad", [("partial_fc", "kernels", "cuda"), ("partial_fc", "centers_on", "disk"),
                                               ("partial_fc", "sample_rate", 0.0), ("loss", "scale", 0.0)])
def test_config_and_head_reject_the_same_values_in_the_same_words(section, key, bad):
    rule = re.escape(options.RULES[key][1])
    with pytest.raises(ConfigError, match=f"{section}.{key} = .* must be {rule}"):
        build_config({section: {key: bad}})
    with pytest.raises(ValueError, match=f"{key} must be {rule}"):
        options.check(key, bad)


def test_loading_the_config_and_the_option_rules_loads_no_mxnet():
    code = "import sys, pfc_mx.config, pfc_mx.head.options; assert 'mxnet' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
