"""utils/stop_replay.py: the stopping rule replayed on a recorded validation curve."""
import json
import subprocess
import sys

import pytest

from utils.errors import UserError
from utils.stop_replay import main, replay, validation_curve


def write_run(path, values, first=100):
    """A run directory whose metrics.jsonl has one check per value, `first` steps apart."""
    path.mkdir()
    rows = [{"iters": first * (i + 1), "val_rel_l2": v, "val_loss": 10 * v}
            for i, v in enumerate(values)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_replay_margin_decides_the_stop(tmp_path):
    # slow gains of 0.6% per check after check 2: every second check is a 1% improvement
    # on the best, so a 1% margin never stops (patience 2); a 2% margin stops two checks
    # after check 2 (step 200), at check 4
    values = [1.0, 0.5, 0.497, 0.494, 0.491, 0.488, 0.485]
    curve = validation_curve(write_run(tmp_path / "r", values), "val_rel_l2")
    assert curve[1] == (200, 0.5)
    assert replay(curve, 2, 0.01) == (700, 0.485)          # never stopped: last check
    assert replay(curve, 2, 0.02) == (400, 0.494)          # stopped at check 4
    assert replay(curve, 2, 0.0) == (700, 0.485)


def test_cli_table_and_errors(tmp_path, capsys):
    run = write_run(tmp_path / "r", [1.0, 0.5, 0.497, 0.494, 0.491, 0.488, 0.485])
    main([run, "--patience", "2", "--min_delta", "0.01", "0.02"])
    line = capsys.readouterr().out.splitlines()[1]
    assert line == f"{run} | 700 | 0.485 | 700 1.000 | 400 {0.494 / 0.485:.3f}"
    main([run, "--patience", "2", "--metric", "val_loss", "--min_delta", "0.02"])
    assert capsys.readouterr().out.splitlines()[1].endswith("| 400 1.019")
    with pytest.raises(UserError, match="no validation check"):
        main([str(tmp_path), "--patience", "2"])
    with pytest.raises(UserError, match="--patience must be"):
        main([run, "--patience", "0"])
    # as a command: one line on stderr, exit status 2
    p = subprocess.run([sys.executable, "utils/stop_replay.py", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no validation check" in p.stderr
