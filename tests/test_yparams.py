"""YParams: merge keys, access, overrides, path resolution, config-name errors."""
import os

import pytest

from utils.YParams import (REPO_ROOT, ConfigError, YParams, apply_overrides, parse_overrides,
                           read_yaml)

YAML = """
base: &base
  lr: 1E-3
  layers: [8, 8]
  train_path: 'data/x/train.h5'
  pretrained: null
  in_memory: !!bool False
child:
  <<: *base
  lr: 5e-4
  seed: 3
"""


@pytest.fixture
def yfile(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(YAML)
    return str(p)


def test_merge_keys_and_access(yfile):
    p = YParams(yfile, "child")
    assert p.lr == 5e-4 and isinstance(p.lr, float)        # own value wins over the anchor
    assert p["layers"] == [8, 8] and p.seed == 3             # inherited and own keys
    assert YParams(yfile, "base").lr == 1e-3                 # YAML 1.2 float without a dot
    assert p.get("missing", 7) == 7 and "seed" in p
    p["new"] = 1
    p.other = 2
    assert p.new == 1 and p["other"] == 2
    d = p.to_dict()
    d["lr"] = 0
    assert p.lr == 5e-4                                      # to_dict is a copy
    with pytest.raises(AttributeError):
        _ = p.nope


def test_config_paths_relative_to_repo_root(yfile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = YParams(yfile, "child")
    assert p.train_path == os.path.join(REPO_ROOT, "data", "x", "train.h5")
    assert p.pretrained is None
    apply_overrides(p, ["train_path=rel/t.h5", "lr=2e-3", "layers=[4, 4, 4]", "project=abc"])
    assert p.train_path == os.path.join(str(tmp_path), "rel", "t.h5")  # CLI paths: CWD
    assert p.lr == 2e-3 and p.layers == [4, 4, 4] and p.project == "abc"


def test_read_yaml_copies_and_rereads_a_changed_file(yfile, tmp_path):
    """read_yaml keeps parsed files (sweep workers read one config per trial twice): each call
    returns its own copy, and a file edited in place or replaced is read again."""
    doc = read_yaml(yfile)
    doc["child"]["lr"] = 7.0
    doc["base"]["layers"].append(1)
    again = read_yaml(yfile)
    assert again["child"]["lr"] == 5e-4 and again["base"]["layers"] == [8, 8]
    with open(yfile, "a") as f:                    # in place: another size
        f.write("extra: {lr: 1.0}\n")
    assert read_yaml(yfile)["extra"] == {"lr": 1.0}
    new = tmp_path / "new.yaml"                    # replaced (an editor's or an atomic write)
    new.write_text(YAML.replace("lr: 5e-4", "lr: 6e-4"))   # same size as the original
    os.replace(new, yfile)
    assert read_yaml(yfile)["child"]["lr"] == 6e-4 and "extra" not in read_yaml(yfile)
    assert YParams(yfile, "child").lr == 6e-4


def test_unknown_config_lists_available(yfile):
    with pytest.raises(ConfigError, match=r"unknown config 'nope'.*available: base, child"):
        YParams(yfile, "nope")


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        YParams(str(tmp_path / "none.yaml"), "x")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["=3"])
    assert parse_overrides(["a=null", "b=", "c=true"]) == {"a": None, "b": None, "c": True}


def test_shipped_configs_load():
    for fname, names in [("operators_poisson.yaml", ["poisson-scale-k1_5", "poisson-demo"]),
                         ("operators_ad.yaml", ["ad-scale-adr0p2_1", "ad-demo"]),
                         ("operators_helmholtz.yaml", ["helm-scale-o1_10", "helm-demo"]),
                         ("operators_darcy.yaml", ["darcy-scale-s0p5_1", "darcy-demo"])]:
        for name in names:
            p = YParams(os.path.join(REPO_ROOT, "configs", fname), name)
            assert p.lr == 1e-3 or name.endswith("demo")
            assert isinstance(p.lr, float)
            assert os.path.isabs(p.train_path) and p.train_path.startswith(REPO_ROOT)
            assert p.in_dim == {"operators_poisson.yaml": 4, "operators_ad.yaml": 6,
                                "operators_helmholtz.yaml": 3, "operators_darcy.yaml": 2}[fname]
    main = YParams(os.path.join(REPO_ROOT, "configs", "operators_poisson.yaml"), "poisson-scale-k1_5")
    assert (main.mode_cut, main.embed_cut, main.fc_cut, main.batch_size, main.max_epochs,
            main.loss_style, main.scheduler) == (32, 64, 2, 128, 500, "sum", "cosine")
    assert len(main.layers) == 5
