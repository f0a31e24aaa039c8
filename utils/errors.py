"""THE error hierarchy of the project: every user-facing error class lives here.

A `UserError` is a mistake in what the user handed us (arguments, config, paths, data,
checkpoints): every CLI reports it as ONE line `error: <message>` on stderr and exits with
status 2 (`utils/cli.py`), leaving data intact. `TrainingDiverged` is reported the same way but
exits 1: the input was valid, the optimisation failed (NaN/inf loss).

Modules re-export the classes they raise under their historical names (e.g.
`utils.trainer.CheckpointError`, `utils.finetune.FinetuneError`); they are the same objects.
"""


class UserError(Exception):
    """A mistake in the user's input (arguments, config, paths, data). CLI exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """Bad or missing config file, config name, config value or --set override."""


class FNOConfigError(ConfigError, ValueError):
    """The model config is inconsistent, or an input does not fit the model (models/fno.py).

    Also a ValueError, as it always was, for callers that catch that."""


class DataError(UserError):
    """Data on disk or data-layer arguments that do not fit (bad path, missing key, shapes,
    existing output without --overwrite)."""


class MixedDataError(DataError):
    """Split files that cannot be put in the mixed-physics layout (utils/mixed_data.py)."""


class CheckpointError(UserError):
    """The run's own checkpoint cannot be read (resume)."""


class FinetuneError(UserError):
    """Pre-trained weights missing or not matching the model, or a bad `freeze` spec."""


class EvalError(UserError):
    """Bad eval input (weights file, model/config mismatch)."""


class SweepError(UserError):
    """A mistake in a sweep file or a sweep-runner argument."""


class AnalysisError(UserError):
    """A mistake in the inputs of the scaling-study analysis (utils/scaling_plots.py)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or inf. CLI exit status 1 (not a user error)."""

    exit_code = 1


class StorageError(Exception):
    """A write failed: full disk, quota, file-size limit, I/O error. Not the user's input:
    CLI exit status 3; the files written before are intact (atomic writes)."""

    exit_code = 3


# what a CLI reports as one line (utils/cli.py)
REPORTED = (UserError, TrainingDiverged, StorageError)
