"""The project's user-facing errors: one line that names the file, key or record.

Command-line tools catch PfcError, print its message as one line and exit 2
(see tools/_cli.py); anything else is a bug and keeps its traceback.
"""


class PfcError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(PfcError):
    """A config file or override is invalid (unknown key, wrong type, out of range)."""


class DatasetError(PfcError):
    """A dataset is missing, truncated, corrupt beyond tolerance, or inconsistent."""


class CheckpointError(PfcError):
    """A checkpoint is missing, incomplete, corrupt, or cannot be written."""


class ModelError(PfcError):
    """A model name, model file or parameter set is unknown, missing or mis-shaped."""


class ExportError(PfcError):
    """ONNX export failed or its parity check did not pass."""


class TrainingError(PfcError):
    """Training cannot go on (non-finite loss, lost rank, ...)."""
