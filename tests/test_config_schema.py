"""The config defaults live in one table (utils/config_schema.py), applied at load."""
import glob
import os

import pytest

from utils.config_schema import IGNORED, SCHEMA, Key, defaults, param
from utils.YParams import REPO_ROOT, YParams, load_yaml


def test_schema_is_plain_data():
    for key, spec in SCHEMA.items():
        assert isinstance(spec, Key) and spec.doc and isinstance(spec.types, tuple), key
        if spec.default is None:
            assert spec.nullable, key
        else:
            assert isinstance(spec.default, spec.types), key
        if spec.choices is not None:
            assert spec.default in spec.choices, key
    assert not set(SCHEMA) & set(IGNORED)


def test_defaults_applied_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  lr: 0.5\n  nx: 64\n")
    p = YParams(str(path), "a")
    assert p.lr == 0.5 and p.nx == 64                          # given values win
    assert p.loss_style == "sum" and p.loss_func == "mse" and p.optimizer == "adam"
    assert p.valid_batch_size is None and p.pretrained_strict is True
    assert set(defaults()) <= set(p.keys())


def test_param_falls_back_to_the_table():
    from types import SimpleNamespace
    assert param({"lr": 2.0}, "lr") == 2.0 and param({}, "lr") == SCHEMA["lr"].default
    assert param(SimpleNamespace(fc_dim=7), "fc_dim") == 7
    assert param(SimpleNamespace(), "fc_dim") == 128
    with pytest.raises(KeyError):
        param({}, "not_a_key")


def test_every_shipped_config_key_is_known():
    """Each key of the shipped configs is read by the code (SCHEMA) or listed as ignored."""
    known = set(SCHEMA) | set(IGNORED)
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "operators_*.yaml")):
        with open(path) as f:
            doc = load_yaml(f)
        for name, cfg in doc.items():
            assert set(cfg) <= known, (path, name, set(cfg) - known)
            YParams(path, name)   # loads
