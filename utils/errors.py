"""The project's user-facing errors: a CLI prints one `error: ...` line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (arguments, config, paths, data)."""


class DataError(UserError):
    """Data on disk or data-layer arguments that do not fit (bad path, missing key, shapes,
    existing output without --overwrite)."""
