"""pfc_mx.config: inheritance, overrides, strict schema with suggestions, path checks."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from pfc_mx.config import build_config, check_data_paths, load_config, save_config
from pfc_mx.errors import ConfigError, DatasetError
from pfc_mx.margin_rules import get_margin

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert 0 < cfg.partial_fc.sample_rate <= 1
    assert len(cfg.loss.margins) == 3


def test_recipe_inherits_base_and_resolves_paths_relative_to_its_file():
    cfg = load_config(CONFIGS / "webface42m_r100_pfc02.yaml")
    assert cfg.partial_fc.sample_rate == 0.2
    assert cfg.loss.margins == (1.0, 0.0, 0.4)
    assert cfg.optim.momentum == 0.9  # from base.yaml
    assert cfg.data.rec == str((CONFIGS / "../datasets/WebFace42M").resolve())


def test_base_chain_two_levels_deep():
    cfg = load_config(CONFIGS / "glint360k_r100_cosface.yaml")
    assert cfg.loss.margin == "cosface" and cfg.data.num_classes == 360232


def test_overrides_are_typed_and_applied_last(tmp_path):
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml",
                      ["optim.lr=0.2", "partial_fc.sample_rate=0.1", "loss.margin=[1.0, 0.3, 0.2]",
                       f"data.rec={tmp_path}", "seed=7"])
    assert cfg.optim.lr == 0.2 and cfg.partial_fc.sample_rate == 0.1
    assert cfg.loss.margins == (1.0, 0.3, 0.2)
    assert cfg.data.rec == str(tmp_path) and cfg.seed == 7


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'; did you mean 'lr'"),
    ("optimm.lr=0.1", "unknown key 'optimm'; did you mean 'optim'"),
    ("partial_fc.sample_rate=0", "partial_fc.sample_rate = 0.0 must be in (0, 1]"),
    ("partial_fc.sample_rate=1.5", "must be in (0, 1]"),
    ("data.batch_size=0", "data.batch_size = 0 must be > 0"),
    ("data.batch_size=12.5", "data.batch_size: expected an integer"),
    ("model.fp16=maybe", "model.fp16: expected true or false"),
    ("loss.margin=sphereface", "loss.margin = 'sphereface': use one of"),
    ("loss.margin=[1.0, 0.5]", "loss.margin = [1.0, 0.5]: need three numbers [m1, m2, m3]"),
    ("loss.margin=[1.0, 4.0, 0.0]", "need m1 > 0, 0 <= m2 < pi, 0 <= m3 < 1"),
    ("optim.schedule=multistep", "needs optim.milestones"),
    ("partial_fc.centers_on=disk", "'device' or 'host'"),
    ("optim.skip_nonfinite=-1", "optim.skip_nonfinite = -1 must be >= 0"),
    ("optim.skip_nonfinite=1.5", "optim.skip_nonfinite: expected an integer"),
    ("data.max_corrupt_fraction=1.5", "data.max_corrupt_fraction = 1.5 must be in [0, 1]"),
    ("no_equals_sign", "expected section.key=value"),
    ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
    ("optim.momentum=.nan", "optim.momentum: expected a finite number, got nan"),
    ("loss.scale=-.inf", "loss.scale: expected a finite number, got -inf"),
    ("data.batch_size=.inf", "data.batch_size: expected an integer"),
    ("data.on_wrong_size=crop", "data.on_wrong_size = 'crop' must be 'resize', 'skip' or 'error'"),
])
def test_bad_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "ms1mv3_r50.yaml", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {CONFIGS / 'base.yaml'}\noutput:\n  checkpoint_evry: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'output.checkpoint_evry'; did you mean 'checkpoint_every'"):
        load_config(bad)


def test_missing_file_base_cycle_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: b.yaml\n")
    b.write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    (tmp_path / "c.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")


def test_data_paths_checked_before_training(tmp_path):
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml", [f"data.rec={tmp_path}"])
    with pytest.raises(ConfigError, match="train.rec does not exist"):
        check_data_paths(cfg)
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(ConfigError, match="index .*train.idx is missing"):
        check_data_paths(cfg)
    (tmp_path / "train.idx").write_text("")
    with pytest.raises(DatasetError, match=r"^eval.targets: lfw: no lfw.bin beside the rec in "):
        check_data_paths(cfg)  # the recipe's targets (lfw, cfp_fp, agedb_30) are not there
    check_data_paths(load_config(CONFIGS / "ms1mv3_r50.yaml", [f"data.rec={tmp_path}", "eval.targets=[]"]))


def test_eval_targets_take_names_beside_the_rec_and_paths_relative_to_the_config(tmp_path):
    data, sets = tmp_path / "data", tmp_path / "sets"
    data.mkdir()
    sets.mkdir()
    for f in (data / "train.rec", data / "train.idx", data / "lfw.bin", sets / "mine.bin"):
        f.write_bytes(b"")
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text(f"_base_: {CONFIGS / 'demo.yaml'}\ndata: {{rec: data}}\n"
                        "eval: {targets: [lfw, sets/mine.bin]}\n")
    cfg = load_config(cfg_file)
    assert cfg.eval.targets == ["lfw", str(sets / "mine.bin")]
    check_data_paths(cfg)
    from pfc_mx.data.verification_bin import find_bins
    assert find_bins(cfg.eval.targets, data) == [data / "lfw.bin", sets / "mine.bin"]
    cfg_file.write_text(f"_base_: {CONFIGS / 'demo.yaml'}\ndata: {{rec: data}}\n")  # inherits synthetic_val
    with pytest.raises(DatasetError, match="eval.targets: synthetic_val: no synthetic_val.bin beside the rec"):
        check_data_paths(load_config(cfg_file))
    with pytest.raises(DatasetError, match=r"eval.targets: .*elsewhere.bin: verification set not found"):
        check_data_paths(load_config(cfg_file, [f"eval.targets=[{tmp_path / 'elsewhere.bin'}]"]))


def test_saved_config_loads_back_identical(tmp_path):
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml", ["optim.lr=0.3"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg and again.digest() == cfg.digest()


def test_fault_tolerance_keys_default_and_override():
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml")
    assert cfg.optim.skip_nonfinite == 0 and cfg.data.max_corrupt_fraction == 0.02
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml", ["optim.skip_nonfinite=3", "data.max_corrupt_fraction=0.2"])
    assert cfg.optim.skip_nonfinite == 3 and cfg.data.max_corrupt_fraction == 0.2


@pytest.mark.parametrize("spec", [
    "arcface", "cosface", "CosFace", "sphereface",
    [1.0, 0.5, 0.0], [0.9, 0.4, 0.15], [1.35, 0.0, 0.0], [1e-9, 0.0, 0.0], [0.0, 0.5, 0.0], [-1.0, 0.5, 0.0],
    [1.0, 0.0, 0.0], [1.0, -1e-9, 0.0], [1.0, math.pi - 1e-9, 0.0], [1.0, 3.1415926, 0.0], [1.0, math.pi, 0.0],
    [1.0, 0.0, -1e-9], [1.0, 0.0, 1.0 - 1e-9], [1.0, 0.0, 1.0], [1.0, 0.0, 2.0],
    [1.0, 0.5], [1.0, 0.5, 0.0, 0.0],
])
def test_config_accepts_exactly_the_margins_the_margin_module_accepts(spec):
    try:
        expected = get_margin(spec)
    except ValueError:
        expected = None
    try:
        got = build_config({"loss": {"margin": spec}}).loss.margins
    except ConfigError as e:
        assert expected is None, f"config rejects {spec!r}, pfc_mx.margin_rules takes it: {e}"
        return
    assert got == expected


def test_loading_a_config_does_not_load_mxnet_or_opencv():
    code = "import sys, pfc_mx.config; sys.exit('mxnet' in sys.modules or 'cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


# ---------------------------------------------------------------- numbers as people write them
def _numeric_keys():
    """(section, key, kind) of every int, float and List[float] key of the schema, with its default."""
    import dataclasses
    from typing import get_type_hints

    from pfc_mx.config import Config
    out = []
    for section in dataclasses.fields(Config):
        hint = get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(hint):
            if hint in (int, float):
                out.append((section.name, None, hint, getattr(Config(), section.name)))
            continue
        default = getattr(Config(), section.name)
        for key, kind in get_type_hints(hint).items():
            if kind in (int, float):
                out.append((section.name, key, kind, getattr(default, key)))
    return out


NUMERIC_KEYS = _numeric_keys()


def _exponent(value: float) -> str:
    """value in the shortest e-notation without a dot where possible: 0.0005 -> '5e-4', 64.0 -> '6.4e1'."""
    mantissa, exp = f"{value:.15e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def _spellings(kind, value):
    """Ways people write value that Python's float() (and int(), for int keys) reads."""
    texts = [_exponent(float(value)), _exponent(float(value)).upper(), f"{float(value):e}", f"+{_exponent(float(value))}"]
    if kind is int:
        texts += [f"{value:_}", f"{float(value):.1f}"]
    else:
        texts += [repr(float(value)), f"{float(value):.6E}"]
    return texts


def test_the_schema_has_the_numeric_keys_this_test_covers():
    names = {f"{s}.{k}" if k else s for s, k, _, _ in NUMERIC_KEYS}
    assert {"optim.weight_decay", "optim.lr", "model.bn_eps", "data.batch_size", "optim.epochs", "seed"} <= names
    assert len(NUMERIC_KEYS) >= 25


@pytest.mark.parametrize("section, key, kind, default", NUMERIC_KEYS,
                         ids=[f"{s}.{k}" if k else s for s, k, _, _ in NUMERIC_KEYS])
def test_every_numeric_key_takes_every_spelling_float_reads_in_yaml_and_in_set(section, key, kind, default,
                                                                               tmp_path):
    """YAML 1.1 reads 5e-4 and 1e3 as strings; a config takes them as the numbers they are."""
    dotted = f"{section}.{key}" if key else section
    for text in _spellings(kind, default):
        assert float(text) == default, text  # each spelling is one Python reads as the default
        from_set = load_config(CONFIGS / "base.yaml", [f"{dotted}={text}"])
        yaml_text = f"{section}:\n  {key}: {text}\n" if key else f"{section}: {text}\n"
        (tmp_path / "c.yaml").write_text(f"_base_: {CONFIGS / 'base.yaml'}\n" + yaml_text)
        from_file = load_config(tmp_path / "c.yaml")
        for cfg in (from_set, from_file):
            got = getattr(getattr(cfg, section), key) if key else getattr(cfg, section)
            assert got == default and type(got) is kind, (text, got)


@pytest.mark.parametrize("section, key, kind, default", NUMERIC_KEYS,
                         ids=[f"{s}.{k}" if k else s for s, k, _, _ in NUMERIC_KEYS])
def test_every_numeric_key_refuses_inf_nan_and_words_and_int_keys_fractions(section, key, kind, default):
    dotted = f"{section}.{key}" if key else section
    bad = {"inf": "a finite number", "-Infinity": "a finite number", "nan": "a finite number", "5e-4x": "a number",
           "five": "a number"}
    if kind is int:
        bad = {t: "an integer" for t in ("inf", "nan", "five", "2.5", "2.5e0", "1e-3")}
    for text, needle in bad.items():
        with pytest.raises(ConfigError) as e:
            load_config(CONFIGS / "base.yaml", [f"{dotted}={text}"])
        assert f"{dotted}: expected {needle}, got " in str(e.value) and text in str(e.value), str(e.value)


def test_lists_of_numbers_and_margins_take_the_same_spellings():
    cfg = load_config(CONFIGS / "base.yaml", ["optim.schedule=multistep", "optim.milestones=[8e0, 1.6e1, 1_8]",
                                              "loss.margin=[1, 5e-1, 0e0]"])
    assert cfg.optim.milestones == [8.0, 16.0, 18.0] and cfg.loss.margins == (1.0, 0.5, 0.0)


def test_weight_decay_as_arcface_torch_writes_it():
    cfg = load_config(CONFIGS / "ms1mv3_r50.yaml", ["optim.weight_decay=5e-4", "optim.lr=1e-1",
                                                    "data.batch_size=1.28e2"])
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.data.batch_size) == (5e-4, 0.1, 128)
