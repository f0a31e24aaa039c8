"""Generated files are byte-identical to recorded ones (SHA-256 of the HDF5 bytes).

The checksums were recorded by running the generator scripts before the PDE registry
refactor; a refactor of the generators, the sampling recipe or the file writer that changes a
single stored bit fails here. The scripts run as the user runs them (subprocess), in the
cases that matter: sparse and dense sources, 1 and 2 worker processes, two seeds and ranges.
If a change of the files is intended, bump GENERATOR_VERSION and record new checksums.
"""
import hashlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (script, arguments) -> {split: sha256 of the file}; n = 32, 16 Gaussians, 64/32/32 samples.
CASES = {
    "poisson-sparse-w1": (
        "gen_data_poisson.py", ["--e1", "1", "--e2", "5", "--sparse", "--workers", "1",
                                "--seed", "0"]),
    "poisson-dense-w2": (
        "gen_data_poisson.py", ["--e1", "2.5", "--e2", "7.5", "--workers", "2",
                                "--seed", "12345"]),
    "ad-sparse-w1": (
        "gen_data_advdiff.py", ["--adr1", "0.2", "--adr2", "1", "--sparse", "--workers", "1",
                                "--seed", "0"]),
    "ad-dense-w2": (
        "gen_data_advdiff.py", ["--adr1", "1", "--adr2", "2", "--workers", "2",
                                "--seed", "12345"]),
    "helmholtz-sparse-w1": (
        "gen_data_helmholtz.py", ["--o1", "1", "--o2", "10", "--sparse", "--workers", "1",
                                  "--seed", "0"]),
    "helmholtz-dense-w2": (
        "gen_data_helmholtz.py", ["--o1", "10", "--o2", "20", "--workers", "2",
                                  "--seed", "12345"]),
    # recorded when Darcy was added (after the refactor)
    "darcy-sparse-w1": (
        "gen_data_darcy.py", ["--s1", "0.5", "--s2", "1", "--sparse", "--workers", "1",
                              "--seed", "0"]),
    "darcy-two_phase-dense-w2": (
        "gen_data_darcy.py", ["--s1", "1", "--s2", "2", "--two_phase", "--workers", "2",
                              "--seed", "12345"]),
}
SHA256 = {
    "ad-dense-w2": {
        "test": "d2183abc1c289700679314fb4a330c95ca4a511528934a79e5dbe7f7f8dc3c39",
        "train": "6c6246abd5f6a6b1403091a0a1b918d98d7a0f10593b318c64d6f187ae6a25b7",
        "val": "0060cac3e2d7c2c329151b7dcd27dc2ef179a8e42f64c086d38e27ea4d01b446"},
    "darcy-sparse-w1": {
        "test": "c8392dd3e6e131806c1e906339b063b52da640e51247fe17c70e4b20e402a3cd",
        "train": "8afdd94c72c56fcb5d2d43837300492783c26964a5f668246bf74b13eabacedf",
        "val": "3a8375d1d7ee594399671cddfede8fb8581272eb373aa0c52068dbdef0a723db"},
    "darcy-two_phase-dense-w2": {
        "test": "a890829617a5140e32d1d8284707af6a43ed9785c476e5b90f84b65b6e1721ea",
        "train": "d16aa429ac9c73b331809dfb1bbae888ae5417501ce2fa8f812f009b0180566f",
        "val": "4642ed30b6786b73e744a32458781b770deb2d55852f16e244a7052774615c0b"},
    "ad-sparse-w1": {
        "test": "284303dd9299a02925c15f9b7104646fb86b533c88486c1e24f0ae8a89d138f5",
        "train": "96bf1e3e1dfcd3a2702c3e610805abbc9e82422da9face9145922fe13d4d078f",
        "val": "0f6291fc463a756487df0a49e8f3a8a408a0ee561563a1f41de03faba7e553e0"},
    "helmholtz-dense-w2": {
        "test": "c89c8d724396f76c834ed4074e456e2a2ae261b00fb7ec2bf27472d2f88524cd",
        "train": "3b6f3235c6ce3ea11a83ffe31c091f795c3549de4820036a875e8d1d0060cb64",
        "val": "8d0580d74c357ac2b3ba90874e47eb36148bb3fdc8642f14a9cabca22df1195c"},
    "helmholtz-sparse-w1": {
        "test": "b2e281ff8a7f2eb6926a99fd54c25c2dae1fb8135c43cf0fb787b8376476c3d9",
        "train": "d5e76fa3de9c3b3c6f8333afc5d1cc4860593f230a2f0bf5d2247b3a51251baf",
        "val": "028a110166daf84967c776ae44da09355e94335ba1a95c1e8f4d250cb94dfcd3"},
    "poisson-dense-w2": {
        "test": "e37a44d3a47cef5b0891768c0cab86ce746e971b9b16213df88776a6cf0912b1",
        "train": "d78f24649d5733d239e251dfe279539c8211cef1237361304bed2a18df68bc7f",
        "val": "a95af335de55d6c54db7ac6c5e8fa7fbdb57dd6f3e93d9d29e1f42c67a5608a5"},
    "poisson-sparse-w1": {
        "test": "c68362d90a2c066036653579ce57b0b6c4c9a4316746fc3683663f362e09f8c1",
        "train": "1032930cbf76988110827e2367ad802218384f616435e0a9c9a95bbcb951097f",
        "val": "bf4541befd6b4d0b950f0fff8bbd0657115aec177292bb0d3366c9988a7f9177"},
}


def generate(tmp_path, script, args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, os.path.join("utils", script), "--n", "32", "--ng", "16",
         "--ntrain", "64", "--nval", "32", "--ntest", "32", "--chunk_size", "32",
         "--datapath", str(tmp_path), *args],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = sorted(os.listdir(tmp_path))
    return {name.split("_")[1]: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
            for name in names}


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_files_are_byte_identical_to_the_recorded_ones(tmp_path, case):
    script, args = CASES[case]
    assert generate(tmp_path, script, args) == SHA256[case]
