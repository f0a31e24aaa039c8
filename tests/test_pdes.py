"""The PDE registry (utils/pdes.py): one entry per equation, read by every consumer."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from utils import pdes
from utils.errors import DataError, MixedDataError
from utils.h5io import SplitFile, dataset_path, range_tag
from utils.mixed_data import pde_of, to_mixed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_aliases_and_tags():
    assert pdes.names(default_only=True) == ["poisson", "ad", "helmholtz"]
    assert pdes.get("advdiff").name == "ad" and pdes.get("Helmholtz").name == "helmholtz"
    assert pdes.get("helm").name == "helmholtz"       # run.sh: helm-demo
    with pytest.raises(pdes.UnknownPDE, match="unknown pde 'heat'"):
        pdes.get("heat")
    assert [range_tag(p, lo, hi) for p, lo, hi in
            (("poisson", 2.5, 7.5), ("advdiff", 0.2, 1), ("helmholtz", 1, 10))] == \
        ["k2p5_7p5", "adr0p2_1", "o1_10"]
    assert dataset_path("d", "ad", "val", 0.2, 1) == os.path.join("d", "ad_val_adr0p2_1.h5")
    with pytest.raises(DataError, match="unknown pde"):
        range_tag("heat", 1, 2)


def test_mixed_mapping_comes_from_the_registry():
    t = np.array([[0.01, 0.05, 0.002, 0.3, 0.4]])
    np.testing.assert_array_equal(to_mixed("ad", t), [[0.01, 0.05, 0.002, 0.3, 0.4, 0]])
    np.testing.assert_array_equal(to_mixed("helmholtz", np.array([[0.01, 7.0]])),
                                  [[0.01, 0.01, 0, 0, 0, 7.0]])


def _write(path, k, pde=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("fields", data=np.zeros((2, 2, 8, 8), np.float32))
        f.create_dataset("tensor", data=np.zeros((2, k), np.float32))
        if pde is not None:
            f.attrs["pde"] = pde
    return str(path)


def test_a_files_pde_is_its_attribute_never_its_width(tmp_path):
    # a Helmholtz file with 3 columns is not a Poisson file: its width is an error
    bad = _write(tmp_path / "x.h5", 3, "helmholtz")
    with pytest.raises(MixedDataError, match="a helmholtz file needs 2 coefficient columns"):
        pde_of(bad, 3, "helmholtz")
    assert pde_of(_write(tmp_path / "y.h5", 5, "advdiff"), 5, "advdiff") == "ad"
    # without the attribute: the name prefix, else a clear error
    named = _write(tmp_path / "helmholtz_test_o1_10.h5", 2)
    assert pde_of(named, 2, None) == "helmholtz"
    anon = _write(tmp_path / "data.h5", 3)
    with pytest.raises(MixedDataError, match="has no 'pde' attribute"):
        pde_of(anon, 3, None)
    with SplitFile(anon) as sf:              # a foreign file still reads: tensor inputs
        assert (sf.input_dataset, sf.n_inputs) == ("tensor", 3)


def test_shell_cli():
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "utils.pdes", *args], cwd=REPO,
                             capture_output=True, text=True)
        return out.returncode, out.stdout.strip(), out.stderr.strip()

    assert cli("names") == (0, "poisson ad helmholtz", "")
    assert cli("tag", "poisson", "1,5")[1] == "k1_5"
    assert cli("name", "advdiff")[1] == "ad"
    assert cli("gen_args", "ad", "0.2,1")[1] == "utils/gen_data_advdiff.py --adr1 0.2 --adr2 1"
    assert cli("ranges_env", "helmholtz")[1] == "HELM_RANGES"
    assert cli("ranges", "poisson", "paper")[1] == "1,5 1,2.5 2.5,7.5 5,10 10,20"
    code, _, err = cli("tag", "heat", "1,2")
    assert code == 2 and err.startswith("error: unknown pde 'heat'")
