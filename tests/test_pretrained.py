"""Self-contained checkpoints, the load_pretrained/solve API, predict.py and its errors."""
import json
import re
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from models.fno import resolve_config
from tests.helpers import poisson_samples, train_tiny_poisson, write_split
from utils.YParams import REPO_ROOT, YParams
from utils.cli import run_cli
from utils.errors import CheckpointError, DataError
from utils.inferencer import run_eval
from utils.checkpoint import read_checkpoint
from utils.model_card import card_path_for
from utils.pretrained import export_pretrained, load_pretrained
from utils.trainer import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny Poisson model trained for 2 epochs (n = 16, modes 4)."""
    tmp = tmp_path_factory.mktemp("pre")
    data, cfg, weights = train_tiny_poisson(tmp)
    return dict(tmp=tmp, data=data, cfg=cfg, weights=weights)


def rel_errors(pred, target):
    pred, target = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    return np.linalg.norm(pred - target, axis=1) / np.linalg.norm(target, axis=1)


def read_split(path):
    with h5py.File(path, "r") as f:
        return f["fields"][:], f["tensor"][:]


def test_checkpoint_carries_model_info_and_card(run):
    ckpt = read_checkpoint(run["weights"])
    info = ckpt["model_info"]
    params = YParams(run["cfg"], "tiny")
    assert info["architecture"] == resolve_config(params)
    assert info["pde"] == "poisson" and info["channels"] == ["f", "K11", "K22", "K12"]
    assert info["coefficients"] == {"poisson": ["K11", "K22", "K12"]}
    np.testing.assert_array_equal(info["scales"], np.load(run["data"]["scales_path"]))
    assert info["grid"] == [16, 16] and info["data"][0]["n_samples"] == 32
    assert info["metrics"]["val_rel_l2"] == pytest.approx(ckpt["best_val_rel_l2"])
    assert info["metrics"]["epoch"] == ckpt["best_epoch"]
    card = json.load(open(card_path_for(run["weights"])))
    assert card["weights"] == "ckpt_best.tar"
    assert {k: v for k, v in card.items() if k not in ("weights", "evaluations")} | {
        "metrics": info["metrics"]} == info | {"metrics": info["metrics"]}
    # plain types only: the whole model_info round-trips through JSON unchanged
    assert json.loads(json.dumps(info)) == info


def test_api_agrees_with_eval_and_fills_card(run, tmp_path):
    params = YParams(run["cfg"], "tiny")
    summary = run_eval(params, run["weights"], run["data"]["test_path"], str(tmp_path / "ev"))
    per_sample = np.load(tmp_path / "ev/rel_l2_per_sample.npy")
    model = load_pretrained(run["weights"], device="cpu")
    fields, tensor = read_split(run["data"]["test_path"])
    u = model.solve(fields[:, 0], tensor)
    assert isinstance(u, np.ndarray) and u.shape == (11, 16, 16) and u.dtype == np.float32
    np.testing.assert_allclose(rel_errors(u, fields[:, 1]), per_sample, rtol=1e-5)
    # torch in -> torch out; one sample (n, n) with (k,) coefficients
    ut = model.solve(torch.from_numpy(fields[:, 0]), torch.from_numpy(tensor))
    assert torch.is_tensor(ut) and torch.allclose(ut, torch.from_numpy(u))
    np.testing.assert_allclose(model.solve(fields[3, 0], tensor[3]), u[3], rtol=1e-5, atol=1e-7)
    # eval.py recorded the test error in the card beside the checkpoint (same distribution)
    card = json.load(open(card_path_for(run["weights"])))
    test = card["metrics"]["test"]
    assert test["n_test"] == 11
    assert test["rel_l2_mean"] == pytest.approx(summary["test_rel_l2_mean"])
    assert test["rel_l2_std"] == pytest.approx(per_sample.astype(np.float64).std(ddof=1), rel=1e-5)


def test_api_other_resolution_agrees_with_eval(run, tmp_path):
    fields, tensor = poisson_samples(5, 32, seed=3)
    path = str(tmp_path / "poisson_test_32.h5")
    write_split(path, fields, tensor, "test")
    card = open(card_path_for(run["weights"]), "rb").read()
    run_eval(YParams(run["cfg"], "tiny"), run["weights"], path, str(tmp_path / "ev"))
    u = load_pretrained(run["weights"], device="cpu").solve(fields[:, 0], tensor)
    np.testing.assert_allclose(rel_errors(u, fields[:, 1]),
                               np.load(tmp_path / "ev/rel_l2_per_sample.npy"), rtol=1e-5)
    # not the run's own test split: the card is left as it was
    assert open(card_path_for(run["weights"]), "rb").read() == card


def test_old_checkpoint_still_evaluates_finetunes_and_loads(run, tmp_path):
    ckpt = read_checkpoint(run["weights"])
    del ckpt["model_info"]                      # as written before this change
    old = str(tmp_path / "old.tar")
    torch.save(ckpt, old)
    params = YParams(run["cfg"], "tiny")
    new = run_eval(params, run["weights"], run["data"]["test_path"], str(tmp_path / "a"))
    got = run_eval(params, old, run["data"]["test_path"], str(tmp_path / "b"))
    assert got["test_rel_l2_mean"] == pytest.approx(new["test_rel_l2_mean"], rel=1e-7)
    ft = YParams(run["cfg"], "tiny")
    ft["pretrained"], ft["max_epochs"] = old, 1
    Trainer(ft, str(tmp_path / "ft")).fit()     # fine-tunes from it, writes model_info
    assert read_checkpoint(str(tmp_path / "ft/checkpoints/ckpt.tar"))["model_info"]["training"][
        "pretrained"] == "old.tar"
    # the API rebuilds its info from the training config it carries
    model = load_pretrained(old, device="cpu")
    assert model.info["scales"] == read_checkpoint(run["weights"])["model_info"]["scales"]
    ckpt["config"]["scales_path"] = str(tmp_path / "gone.npy")
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match="predates self-contained checkpoints"):
        load_pretrained(old)


def test_export_small_file_and_finetune_without_scales(run, tmp_path):
    model_path, card_path = export_pretrained(run["weights"], str(tmp_path / "ship"), fmt="pt")
    ckpt = torch.load(model_path, weights_only=True)   # no allowlist needed
    assert sorted(ckpt) == ["model_info", "model_state"]
    assert all(v.dtype == torch.float32 for v in ckpt["model_state"].values())
    assert json.load(open(card_path))["weights"] == "model.pt"
    with pytest.raises(Exception, match="exists"):
        export_pretrained(run["weights"], str(tmp_path / "ship"), fmt="pt")
    # a fine-tune config without scales_path normalises with the model's own scales
    params = YParams(run["cfg"], "tiny")
    params["scales_path"], params["pretrained"], params["max_epochs"] = None, model_path, 1
    trainer = Trainer(params, str(tmp_path / "ft"))
    assert params["scales"] == ckpt["model_info"]["scales"]
    np.testing.assert_array_equal(trainer.train_set.scales, ckpt["model_info"]["scales"])
    trainer.fit()
    assert read_checkpoint(trainer.ckpt_path)["model_info"]["scales"] == params["scales"]


def test_export_card_records_the_stopping_point(run, tmp_path):
    """The exported card of a run's best checkpoint carries the run's stopping point (cap,
    best and last step, early stop, capped-while-improving) from its train_summary.json; a
    checkpoint that is not a run's best gets none."""
    summary = json.load(open(os.path.join(os.path.dirname(os.path.dirname(run["weights"])),
                                          "train_summary.json")))
    _, card_path = export_pretrained(run["weights"], str(tmp_path / "best"), fmt="pt")
    stopping = json.load(open(card_path))["stopping"]
    assert stopping == {k: summary[k] for k in ("max_steps", "best_step", "stop_step",
                                                "stopped_early", "capped_while_improving",
                                                "val_checks")}
    assert stopping["stop_step"] == 8 and stopping["stopped_early"] is False
    latest = os.path.join(os.path.dirname(run["weights"]), "ckpt.tar")
    _, card_path = export_pretrained(latest, str(tmp_path / "latest"), fmt="pt")
    assert "stopping" not in json.load(open(card_path))


def _predict(argv, capsys):
    """predict.py in-process: (exit code, stderr)."""
    import predict

    with pytest.raises(SystemExit) as e:
        run_cli(predict.main, argv)
    return e.value.code, capsys.readouterr().err


def _write_h5(path, fields, tensor, **attrs):
    with h5py.File(path, "w") as f:
        f.create_dataset("fields", data=fields)
        f.create_dataset("tensor", data=tensor)
        f.attrs.update(attrs)
    return str(path)


def test_export_safetensors_loads_predicts_and_finetunes(run, tmp_path, capsys):
    """The default export is model.safetensors: a JSON header and raw tensors (no pickle), the
    model_info in its metadata; load_pretrained, predict.py and fine-tuning take it and give
    what the checkpoint gives."""
    from safetensors import safe_open

    ship = tmp_path / "ship"
    run_cli(__import__("utils.pretrained", fromlist=["main"]).main,
            ["export", run["weights"], str(ship)])
    path = ship / "model.safetensors"
    assert sorted(os.listdir(ship)) == ["model.safetensors", "model_card.json"]
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and b"\x80\x02" not in raw[:8 + header]   # JSON, not a pickle
    card = json.load(open(ship / "model_card.json"))
    assert card["weights"] == "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    assert json.loads(meta["model_info"]) == {k: v for k, v in card.items() if k != "weights"}
    fields, tensor = read_split(run["data"]["test_path"])
    from_ckpt = load_pretrained(run["weights"], device="cpu")
    model = load_pretrained(str(path), device="cpu")
    assert model.info["scales"] == from_ckpt.info["scales"]
    np.testing.assert_array_equal(model.solve(fields[:, 0], tensor),
                                  from_ckpt.solve(fields[:, 0], tensor))
    # predict.py takes it
    import predict

    run_cli(predict.main, ["--weights", str(path), "--input", run["data"]["test_path"],
                           "--out", str(tmp_path / "p.h5")])
    with h5py.File(tmp_path / "p.h5", "r") as f:
        np.testing.assert_array_equal(f["prediction"][:], model.solve(fields[:, 0], tensor))
    # fine-tuning starts from it (weights and, without scales_path, its scales)
    params = YParams(run["cfg"], "tiny")
    params["scales_path"], params["pretrained"], params["max_epochs"] = None, str(path), 1
    trainer = Trainer(params, str(tmp_path / "ft"))
    assert params["scales"] == model.info["scales"]
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, model.model.state_dict()[k])
    # a truncated file: one line, exit 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[:len(raw) // 2])
    capsys.readouterr()
    code, err = _predict(["--weights", str(bad), "--input", run["data"]["test_path"], "--out",
                          str(tmp_path / "q.h5")], capsys)
    assert code == 2 and re.fullmatch(r"error: .*bad\.safetensors is not a readable "
                                      r"safetensors model .*\n", err), err


def test_predict_cli_writes_predictions_and_error(run, tmp_path):
    out = tmp_path / "pred.h5"
    res = subprocess.run([sys.executable, "predict.py", "--weights", run["weights"], "--input",
                          run["data"]["test_path"], "--out", str(out)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert res.returncode == 0, res.stderr
    fields, tensor = read_split(run["data"]["test_path"])
    u = load_pretrained(run["weights"], device="cpu").solve(fields[:, 0], tensor)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["prediction"][:], u)
        rel = f["rel_l2"][:]
        np.testing.assert_array_equal(f["tensor"][:], tensor)
    np.testing.assert_allclose(rel, rel_errors(u, fields[:, 1]), rtol=1e-5)
    assert f"mean {rel.mean():.4f}" in res.stdout
    # sources only (in-process): predictions, no error
    import predict

    src = _write_h5(tmp_path / "src.h5", fields[:, :1], tensor, pde="poisson")
    run_cli(predict.main, ["--weights", run["weights"], "--input", src, "--out",
                           str(tmp_path / "p2.h5"), "--batch_size", "4"])
    with h5py.File(tmp_path / "p2.h5", "r") as f:
        assert "rel_l2" not in f   # batches of 4: same values up to float32 summation order
        np.testing.assert_allclose(f["prediction"][:], u, rtol=1e-5, atol=1e-6 * abs(u).max())


def test_predict_bad_inputs_one_line_exit_2(run, tmp_path, capsys):
    fields, tensor = read_split(run["data"]["test_path"])
    w, good = run["weights"], run["data"]["test_path"]
    ad = _write_h5(tmp_path / "ad.h5", fields, np.ones((11, 5), np.float32), pde="ad")
    cols = _write_h5(tmp_path / "two.h5", fields, tensor[:, :2], pde="poisson")
    small = _write_h5(tmp_path / "small.h5", fields[:, :, :6, :6], tensor, pde="poisson")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = str(tmp_path / "evil.tar")
    torch.save({"model_state": read_checkpoint(w)["model_state"], "x": Evil()}, evil)
    (tmp_path / "exists.h5").write_bytes(b"keep")
    cases = [
        (["--weights", w, "--input", ad], "is a poisson model .* holds ad data"),
        (["--weights", w, "--input", cols], "has 2 coefficient columns but poisson needs 3"),
        (["--weights", w, "--input", small], r"grid 6x6 is too small .* needs H >= 8"),
        (["--weights", str(text), "--input", good], "is not a PyTorch checkpoint"),
        (["--weights", good, "--input", good], "is an HDF5 data file, not a checkpoint"),
        (["--weights", evil, "--input", good],
         "refused: loading it would unpickle .*system"),
        (["--weights", str(tmp_path / "none.pt"), "--input", good], "checkpoint not found"),
    ]
    for argv, pattern in cases:
        code, err = _predict(argv + ["--out", str(tmp_path / "o.h5")], capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(pattern, err), (pattern, err)
        assert not (tmp_path / "o.h5").exists()
    assert not (tmp_path / "PWNED").exists()    # the pickle was refused, not executed
    code, err = _predict(["--weights", w, "--input", good, "--out", str(tmp_path / "exists.h5")],
                         capsys)
    assert code == 2 and "exists" in err and (tmp_path / "exists.h5").read_bytes() == b"keep"
    # the API itself: same checks, one-line DataError
    model = load_pretrained(w, device="cpu")
    with pytest.raises(DataError, match="coefficients must be"):
        model.solve(fields[:, 0], tensor[:, :2])
    with pytest.raises(DataError, match="cannot solve ad problems"):
        model.solve(fields[:, 0], tensor, pde="ad")
    with pytest.raises(DataError, match="too small"):
        model.solve(fields[:, 0, :6, :6], tensor)


def test_mixed_physics_model_maps_coefficients(tmp_path):
    """A 7-channel mixed model: solve(pde=...) puts the PDE's own coefficients in the mixed
    layout (utils/mixed_data.to_mixed) before the one normalisation."""
    from models.fno import FNO2d
    from utils.data_utils import normalize_inputs
    from utils.mixed_data import MIXED_CHANNELS, to_mixed

    arch = dict(in_dim=7, out_dim=1, layers=[8, 8], modes1=[4], modes2=[4], fc_dim=8,
                dropout=0.0)
    torch.manual_seed(0)
    net = FNO2d(**arch).eval()
    scales = [0.01, 0.02, 0.02, 0.01, 0.5, 0.5, 5.0, 0.3, 1.0, 1.0]
    info = dict(version=1, architecture=arch, pde="mixed", pdes=["poisson", "helmholtz"],
                channel_layout="mixed", channels=list(MIXED_CHANNELS),
                coefficients={"poisson": ["K11", "K22", "K12"], "helmholtz": ["t0", "omega"]},
                scales=scales, grid=[16, 16])
    path = str(tmp_path / "mixed.pt")
    torch.save(dict(model_state=net.state_dict(), model_info=info), path)
    model = load_pretrained(path, device="cpu")
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 16, 16)).astype(np.float32)
    t = np.stack([np.full(3, 0.01), [2.0, 5.0, 9.0]], axis=1)
    x = normalize_inputs(f, to_mixed("helmholtz", t), np.asarray(scales), 1 / 256)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(model.solve(f, t, pde="helmholtz"), ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(DataError, match="needs pde="):
        model.solve(f, t)
    with pytest.raises(DataError, match="cannot solve ad problems"):
        model.solve(f, np.ones((3, 5)), pde="ad")


def test_mixed_run_card_records_each_training_range(tmp_path):
    """eval.py's rule for a mixed-physics run's card: a test file of one of its training PDE
    ranges is recorded under `evaluations` (never as `metrics.test`, which would claim one
    error for all its PDEs); a file of another range is not recorded."""
    from utils.model_card import record_test_result

    def split(name, pde, n_tensor, lo, hi):
        path = str(tmp_path / name)
        with h5py.File(path, "w") as f:
            f.create_dataset("fields", data=np.zeros((3, 2, 16, 16), np.float32))
            f.create_dataset("tensor", data=np.ones((3, n_tensor), np.float32))
            f.attrs.update(pde=pde, split="test", n=16, ng=9, coef_range=[lo, hi], seed=0)
        return path

    weights = tmp_path / "checkpoints" / "ckpt_best.tar"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    card_path = card_path_for(str(weights))
    data = [dict(pde="poisson", coef_range=[1.0, 5.0], n=16, ng=9, seed=0),
            dict(pde="ad", coef_range=[0.2, 1.0], n=16, ng=9, seed=0)]
    card = dict(pde="mixed", grid=[16, 16], data=data, metrics=dict(val_rel_l2=0.1),
                weights="ckpt_best.tar")
    with open(card_path, "w") as f:
        json.dump(card, f)
    own = split("poisson_test_k1_5.h5", "poisson", 3, 1.0, 5.0)
    config = dict(test_path=own)

    def evaluate(path):
        summary = dict(test_path=path, test_loss=0.5)
        return record_test_result(str(weights), summary, np.array([0.1, 0.2, 0.3]), config)

    assert evaluate(split("ad_test_adr0p2_1.h5", "ad", 5, 0.2, 1.0)) == card_path
    assert evaluate(own) == card_path
    before = open(card_path).read()
    assert evaluate(split("ad_test_adr1_2.h5", "ad", 5, 1.0, 2.0)) is None       # zero-shot
    assert evaluate(split("helmholtz_test_o1_10.h5", "helmholtz", 2, 1.0, 10.0)) is None
    assert open(card_path).read() == before
    card = json.load(open(card_path))
    assert sorted(card["evaluations"]) == ["ad_test_adr0p2_1.h5", "poisson_test_k1_5.h5"]
    assert card["evaluations"]["ad_test_adr0p2_1.h5"]["coef_range"] == [0.2, 1.0]
    assert card["metrics"] == dict(val_rel_l2=0.1)
