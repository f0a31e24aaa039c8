"""Sweep files and trial settings: the trials a W&B sweep file asks for; one W&B agent trial.

One sweep file (`configs/sweep_config.yaml`, W&B format) serves two ways of running it; this
module is what both share, from the file to a trial's settings in the training config:

* without a server, the local runner (`python utils/sweeps.py`, utils/sweeps.py) reads the
  file (`load_sweep`, `override_values` for `--values`), lists its trials (`expand_grid` for
  a grid, with the per-value settings of `--set_for`: `check_set_for`, `with_set_for`;
  `propose_trials` samples `random`/`bayes` trials offline with W&B's open-source
  `sweeps` engine when installed) and passes each trial's settings to train.py as `--set`
  values (`yaml_text`, `absolute_path_sets`);
* with a W&B server: `train.py --sweep_id ID` calls `run_wandb_trial`, which runs ONE agent
  trial on rank 0, reads the trial's settings from `wandb.config` and broadcasts them to every
  rank with torch.distributed (no MPI). Its run directory is `{root_dir}/sweeps/{ID}/{name}/`;
  `apply_settings` writes the settings into the config, the trainer logs each epoch into the
  trial's W&B run and `record_trial_summary` adds the final summary (the sweep metric
  `best_val_rel_l2`).

Trial names come from the settings only (`lr1em3_s16`, `lr1em3_n64_seed2`), so they are stable
across runs and machines and are safe as file names.
"""
import itertools
import json
import logging
import math
import os
import re

import yaml

from utils.errors import SweepError
from utils.run_layout import sweep_dir
from utils.YParams import is_path_key, load_yaml, parse_overrides, read_yaml, resolve_path

LR_KEY = "lr"
REPEAT_KEYS = ("seed",)   # settings averaged over when choosing a learning rate

logger = logging.getLogger(__name__)
SWEEP_METHODS = ("grid", "random", "bayes")
# short names for the published sweep parameters (`lr1em3_s16`); others keep their key
NAME_ABBREV = {"lr": "lr", "subsample": "s", "n_train": "n", "seed": "seed"}
NAME_FIRST = ("lr", "subsample", "n_train", "seed")


# ----------------------------------------------------------------------------- sweep files
def plain_value(v):
    """numpy scalars (the sweep engine's samples) -> Python numbers (repr, JSON friendly)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def yaml_text(v):
    """`v` as text that yaml.safe_load (train.py's --set parser) reads back as the same value.

    PyYAML reads `1e-05` (what repr/json give) as a STRING; `1.0e-05` is a float.
    """
    v = plain_value(v)
    if isinstance(v, float):
        s = repr(v)
        mant, e, exp = s.partition("e")
        return f"{mant}.0e{exp}" if e and "." not in mant else s
    return json.dumps(v)    # ints, bools, null, strings, lists: JSON is valid YAML


def absolute_path_sets(items, base=None):
    """--set KEY=VALUE items with the relative paths of path keys (`*_path`, `pretrained`)
    made absolute against `base` (default: the current directory): the trials run elsewhere
    (the repository root), but a command-line path means the user's directory (DESIGN.md
    section 7)."""
    base = base or os.getcwd()
    out = []
    for item in items or []:
        (key, value), = parse_overrides([item]).items()
        if is_path_key(key) and resolve_path(value, base) != value:
            item = f"{key}={yaml_text(resolve_path(value, base))}"
        out.append(item)
    return out


def load_sweep(path):
    """Read and check a W&B sweep file -> dict with `method`, `parameters`, `metric`, ...

    Read with the config loader (utils/YParams.py), which reads `1e-5` as a number as W&B does.
    """
    cfg = read_yaml(path, "sweep file", error=SweepError)
    if not isinstance(cfg.get("parameters"), dict) or not cfg["parameters"]:
        raise SweepError(f"sweep file {path} has no `parameters` mapping")
    method = cfg.get("method", "grid")
    if method not in SWEEP_METHODS:
        raise SweepError(f"sweep method {method!r} in {path} is not one of {SWEEP_METHODS}")
    cfg["method"] = method
    for key, spec in cfg["parameters"].items():
        if not isinstance(spec, dict):
            raise SweepError(f"sweep parameter {key!r} must be a mapping with `value` or "
                             f"`values` (got {spec!r})")
        if "values" in spec:
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise SweepError(f"sweep parameter {key!r}: `values` must be a non-empty list")
        elif "value" not in spec and method == "grid":
            raise SweepError(f"grid sweep parameter {key!r} needs `value` or `values` "
                             f"(distributions need method random or bayes)")
    return cfg


def override_values(cfg, overrides):
    """Replace parameter value lists: overrides like ["subsample=8,16,32"] (numbers parsed).

    A key the sweep file does not have becomes a new parameter (e.g. `seed=0,1,2` repeats
    every trial over three seeds); `KEY=` (no values) removes a parameter.
    """
    for item in overrides or []:
        key, sep, vals = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise SweepError(f"--values expects KEY=V1,V2,... (got {item!r})")
        if not vals:
            if key not in cfg["parameters"]:
                raise SweepError(f"--values {key}=: {key!r} is not a parameter of the sweep "
                                 f"(have {sorted(cfg['parameters'])})")
            del cfg["parameters"][key]
            if not cfg["parameters"]:
                raise SweepError(f"--values {key}= leaves the sweep without parameters")
            continue
        if key not in cfg["parameters"]:
            logger.info("--values %s: not in the sweep file, added as a parameter", key)
        try:
            values = [load_yaml(v) for v in vals.split(",")]
        except yaml.YAMLError as e:
            raise SweepError(f"--values {key}: cannot parse {vals!r}") from e
        cfg["parameters"][key] = {"values": values}
    return cfg


def expand_grid(cfg):
    """All trials of a grid sweep -> list of settings dicts, in sweep-file order.

    The first parameter varies slowest (itertools.product), like W&B's grid search.
    """
    keys, choices = [], []
    for key, spec in cfg["parameters"].items():
        keys.append(key)
        choices.append(spec["values"] if "values" in spec else [spec["value"]])
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def propose_trials(cfg, known, n, metric):
    """`n` more trials of a random/bayes sweep `cfg` -> list of settings dicts, proposed
    offline by W&B's open-source sweep engine (the optional package `sweeps`).

    known: [(settings, value)] of the trials so far, `value` the finished trial's `metric`
    (float; bayes fits on these) or None for one not finished.
    """
    try:
        import sweeps as wandb_sweeps   # optional dependency (sweeps==0.2.0 for numpy 2)
    except ImportError as e:
        raise SweepError(f"method {cfg['method']} needs the optional package "
                         f"`sweeps` (pip install sweeps==0.2.0); grid needs nothing") from e
    state = wandb_sweeps.RunState
    runs = [wandb_sweeps.SweepRun(config={k: {"value": v} for k, v in settings.items()},
                                  summaryMetrics={} if value is None else {metric: value},
                                  state=state.running if value is None else state.finished)
            for settings, value in known]
    spec = {k: cfg[k] for k in ("method", "metric", "parameters") if k in cfg}
    new = wandb_sweeps.next_runs(spec, runs, n=n)
    return [{k: plain_value(v["value"]) for k, v in r.config.items()}
            for r in new if r is not None]


# ----------------------------------------------------------------------------- trial names
def format_value(v):
    """Filesystem-safe, stable text for a setting: 1e-3 -> '1em3', 2.5e-4 -> '2p5em4', 16 -> '16'."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and math.isfinite(v) and float(v).is_integer() \
            and abs(v) < 1e6:
        return str(int(v)).replace("-", "m")
    if isinstance(v, float):
        mant, exp = f"{v:.6e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}".replace("-", "m").replace(".", "p")
    if isinstance(v, (list, tuple)):
        return "-".join(format_value(x) for x in v)
    return re.sub(r"[^A-Za-z0-9]+", "-", str(v)).strip("-") or "none"


def trial_name(settings):
    """Name of a trial from its settings: {'lr': 1e-3, 'subsample': 16} -> 'lr1em3_s16'.

    `lr` and `subsample` come first (published naming), then the other keys alphabetically,
    so the name does not depend on the order W&B or a YAML file lists them in.
    """
    keys = [k for k in NAME_FIRST if k in settings]
    keys += sorted(k for k in settings if k not in NAME_FIRST)
    parts = []
    for k in keys:
        if settings[k] is None:
            continue
        short = NAME_ABBREV.get(k, re.sub(r"[^A-Za-z0-9]+", "", k))
        parts.append(short + format_value(settings[k]))
    if not parts:
        raise SweepError("a sweep trial needs at least one setting to be named")
    return "_".join(parts)


# ----------------------------------------------------------------------------- W&B trials
def broadcast_settings(obj, src=0):
    """Send a picklable object from rank `src` to every rank (identity without a process group)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wandb_trial_dir(root_dir, sweep_id, name):
    """Run directory of a W&B sweep trial: {root_dir}/sweeps/{sweep_id}/{name}/."""
    from utils.run_guard import check_plain_name

    return os.path.join(sweep_dir(root_dir, check_plain_name(sweep_id, "--sweep_id")),
                        check_plain_name(name, "trial name"))


def run_wandb_trial(sweep_id, root_dir, train_fn, *, rank, agent=None, init=None,
                    entity=None, project=None):
    """Run one W&B sweep trial on every rank; return its run directory (None: no trial).

    Rank 0 runs `agent(sweep_id, function=trial, count=1, entity=, project=)`; inside
    `trial` it calls `init()` (a W&B run), reads the settings from `run.config`, names the
    trial from them and broadcasts (settings, run_dir) to all ranks. Every rank then calls
    `train_fn(settings, run_dir)`; on rank 0 this happens inside the agent's trial so that
    wandb.log reaches the trial's W&B run. All ranks must call this function (collective).

    `agent` and `init` default to `wandb.agent` and `wandb.init`; tests pass stand-ins.
    """
    if rank != 0:
        msg = broadcast_settings(None)
        if msg is None:       # rank 0 got no trial from the agent (sweep finished, error)
            return None
        settings, run_dir = msg
        train_fn(settings, run_dir)
        return run_dir

    if agent is None or init is None:
        import wandb
        agent = agent or wandb.agent
        init = init or wandb.init
    state = {"sent": False, "run_dir": None}

    def trial():
        run = init()
        cfg = run.config
        settings = {k: cfg[k] for k in cfg.keys()}
        name = trial_name(settings)
        run_dir = wandb_trial_dir(root_dir, sweep_id, name)
        try:
            run.name = name
        except Exception:   # stand-ins / offline runs may not allow renaming; name is cosmetic
            pass
        logger.info("sweep %s: trial %s settings %s -> %s", sweep_id, name, settings, run_dir)
        broadcast_settings((settings, run_dir))
        state.update(sent=True, run_dir=run_dir)
        train_fn(settings, run_dir)

    try:
        agent(sweep_id, function=trial, count=1, entity=entity, project=project)
    except Exception as e:
        if state["sent"]:   # the trial itself failed (training error): report it as it is
            raise
        msg = (str(e).strip().splitlines() or [""])[0]
        raise SweepError(f"W&B agent for sweep {sweep_id} ran no trial: "
                         f"{type(e).__name__}: {msg}") from e
    finally:
        if not state["sent"]:   # never leave the other ranks waiting in the broadcast
            broadcast_settings(None)
    if not state["sent"]:
        logger.warning("sweep %s: the W&B agent ran no trial", sweep_id)
    return state["run_dir"]


def apply_settings(params, settings):
    """Write a trial's settings into a params object (YParams or dict), logging each; the
    settings are checked like --set values (utils/config_schema.validate) and relative paths
    are, like theirs, relative to the current directory."""
    from utils.config_schema import validate

    settings = validate(dict(settings), "the sweep trial's settings")
    for key, value in settings.items():
        if is_path_key(key):
            value = resolve_path(value, os.getcwd())
        if key not in params:
            logger.info("sweep setting %s=%r: not in the config, added", key, value)
        params[key] = value
    return params


def record_trial_summary(summary):
    """Put a finished trial's train summary into the active W&B run (rank 0, inside the
    agent's trial): `best_val_rel_l2`, the sweep's metric, is not an epoch-logged key."""
    import wandb
    if wandb.run is not None and summary:
        wandb.run.summary.update({k: v for k, v in summary.items()
                                  if isinstance(v, (int, float, str))})


LOG_SPACE_BOUNDS = ("log_uniform", "q_log_uniform", "inv_log_uniform")


def check_values(cfg, sets):
    """The sweep's fixed `--set` pairs and every value its parameters can take (`values`,
    `value`, a distribution's `min` / `max`), checked like a train.py --set
    (utils/config_schema.py): a mistake is one SweepError line before any trial starts, not
    one failed trial per grid point."""
    from utils.config_schema import validate
    from utils.errors import ConfigError

    try:
        validate(parse_overrides(sets), "--set")
        for key, spec in cfg["parameters"].items():
            spec = spec if isinstance(spec, dict) else {}
            # W&B's log_uniform / q_log_uniform / inv_log_uniform take min and max as
            # exponents, not values of the key (their *_values forms take values)
            bounds = () if spec.get("distribution") in LOG_SPACE_BOUNDS else ("min", "max")
            values = list(spec.get("values") or []) + [spec[k] for k in ("value", *bounds)
                                                      if k in spec]
            for value in values:
                validate({key: value}, "the sweep's parameters")
    except ConfigError as e:
        raise SweepError(str(e)) from None


def check_set_for(cfg, pairs):
    """The `--set_for` pairs (`PARAM=VALUE`, `KEY=VALUE`) of grid sweep `cfg`, checked ->
    [(param, value, key, setting)]. PARAM must be a swept parameter other than the lr and the
    repeats (the lr choice compares trials that differ only in those), VALUE one of its
    values; KEY=VALUE is checked like a train.py --set (utils/config_schema.py; a relative
    path made absolute as `absolute_path_sets` does) and must not be a swept parameter.
    A SweepError / ConfigError (one line) otherwise."""
    from utils.config_schema import validate

    out, seen = [], set()
    for select, item in pairs or ():
        where = f"--set_for {select} {item}"
        if "=" not in select or "=" not in item:
            raise SweepError(f"{where}: expects PARAM=VALUE KEY=VALUE")
        if cfg["method"] != "grid":
            raise SweepError(f"{where}: per-value settings need a grid sweep")
        (param, value), = parse_overrides([select]).items()
        params = cfg["parameters"]
        if param not in params or param == LR_KEY or param in REPEAT_KEYS:
            raise SweepError(f"{where}: {param!r} must be a swept parameter other than "
                             f"{LR_KEY} and {', '.join(REPEAT_KEYS)} (have {sorted(params)})")
        values = params[param].get("values", [params[param].get("value")])
        if value not in values:
            raise SweepError(f"{where}: {param}={value!r} is not one of the sweep's values "
                             f"{values}")
        (key, setting), = parse_overrides(absolute_path_sets([item])).items()
        if key in params:
            raise SweepError(f"{where}: {key!r} is a swept parameter of the sweep")
        setting = validate({key: setting}, f"--set_for {select}")[key]
        if (param, json.dumps(value), key) in seen:
            raise SweepError(f"{where}: {key} is given twice for {param}={value!r}")
        seen.add((param, json.dumps(value), key))
        out.append((param, value, key, setting))
    return out


def with_set_for(trials, set_for):
    """The grid's trials (settings dicts) with the `check_set_for` settings added to the
    trials they select (new dicts; the others unchanged)."""
    out = []
    for s in trials:
        extra = {k: v for param, value, k, v in set_for if s.get(param) == value}
        out.append({**s, **extra} if extra else s)
    return out
