"""Sweep results: a sweep's `results.csv`, one row per trial, read from what its trials left.

One job: turn the files a trial writes (train.py's `train_summary.json`, the test evaluation's
`eval/summary.json`) into a row of settings and numbers, and write the table of all trials
atomically. The local runner (utils/sweeps.py) writes `{sweep_dir}/results.csv` after every
trial; the analysis (utils/scaling_stats.py) reads it. A row's columns, in order:

    trial, the swept settings, RESULT_FIELDS (a field that is also a setting, n_train or seed,
    appears once, with the value the run reported), the --tag columns, config, status
    (done: the evaluation summary exists; failed; pending), run_dir

`max_steps` is the trial's step cap as the trainer ran it (train_summary.json: `max_steps`
when set, else the fixed budget's epochs x steps per epoch), so that every reading says
what budget it rests on (a `--set_for` cap per n included).
"""
from utils.fileio import read_json, write_csv_atomic

RESULT_FIELDS = ("n_train", "seed", "subset_hash", "best_val_rel_l2", "best_val_loss",
                 "best_epoch", "epochs", "iters", "max_steps", "stopped_early",
                 "capped_while_improving", "test_rel_l2_mean", "test_rel_l2_median",
                 "n_test", "n_params")


def trial_row(name, settings, train_summary, eval_summary, *, config, run_dir, tags=None,
              failed=False):
    """One results.csv row (dict) of trial `name`: its settings, then each RESULT_FIELDS value
    from the evaluation summary, else the train summary, else the settings (else empty).

    train_summary, eval_summary: paths of the trial's summaries (they may not exist yet).
    tags: constant columns (dict); failed: the status when the evaluation summary is missing.
    """
    tr = read_json(train_summary) or {}
    ev = read_json(eval_summary) or {}
    row = {"trial": name, **settings}
    for key in RESULT_FIELDS:
        row[key] = ev.get(key, tr.get(key, settings.get(key, "")))
    row.update(tags or {})
    row["config"] = config
    row["status"] = "done" if ev else ("failed" if failed else "pending")
    row["run_dir"] = run_dir
    return row


def write_results(path, trials, rows, tags=None):
    """Write results.csv at `path` atomically: `rows` (`trial_row`) of the settings dicts
    `trials`, whose keys, in first-seen order, are the setting columns."""
    keys = []
    for s in trials:
        keys += [k for k in s if k not in keys]
    tags = tags or {}
    fields = ["trial"] + keys + [k for k in RESULT_FIELDS if k not in keys] \
        + [k for k in tags if k not in keys] + ["config", "status", "run_dir"]
    write_csv_atomic(path, rows, fields)
    return path
