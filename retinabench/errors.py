"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class BenchError(Exception):
    """A problem the user can fix (bad config, missing file, unknown backend)."""


class ConfigError(BenchError):
    """A scenario file that does not validate; the message names the field."""


class ModelError(BenchError):
    """A model file that is missing, corrupt or uses something we cannot convert."""


class BackendUnavailable(BenchError):
    """A runtime that cannot run here (not installed, no device); the reason is the message."""
