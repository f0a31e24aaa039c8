"""THE command-line wrapper: logging set up once, user errors as one line.

Every CLI of the project (train.py, eval.py, the generators, get_scale, mixed_data, sweeps,
scaling_plots, plot_overview) runs its body through `run_cli` (or the `cli` decorator):

- logging is configured once (`utils.logging_utils.config_logger`: stderr, rank 0 at `level`,
  other ranks warnings only);
- a `utils.errors.UserError` becomes ONE line `error: <message>` on stderr and exit status 2
  (`TrainingDiverged`: exit 1), with no traceback;
- Ctrl-C becomes `error: interrupted` and exit status 130.
"""
import functools
import logging
import sys

from utils.errors import REPORTED
from utils.logging_utils import config_logger


def report(message, code):
    """Print `error: message` as one line on stderr and exit with `code`."""
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)
    sys.exit(code)


def run_cli(main, argv=None, *, level=logging.INFO, user_errors=(), interrupted="interrupted"):
    """Run `main(argv)` as a command-line program; returns what `main` returns.

    Args:
        main: the CLI body, called with `argv` (None: sys.argv[1:] for argparse).
        level: logging level of rank 0.
        user_errors: further exception types reported as user errors (exit 2), e.g.
            (OSError,) for tools whose only file-system access is the paths the user named.
        interrupted: the message printed on KeyboardInterrupt (exit 130).
    """
    config_logger(level=level)
    try:
        return main(argv)
    except REPORTED as e:
        report(e, e.exit_code)
    except tuple(user_errors) as e:
        report(e, 2)
    except KeyboardInterrupt:
        report(interrupted, 130)


def cli(level=logging.INFO, **kwargs):
    """Decorator form of `run_cli`: `@cli()` on `def main(argv=None)`."""
    def wrap(main):
        @functools.wraps(main)
        def wrapped(argv=None):
            return run_cli(main, argv, level=level, **kwargs)
        return wrapped
    return wrap
