"""The project's user-facing errors: one line that names the file, key or record.

Command-line tools catch PfcError, print its message as one line and exit 2
(see pfc_mx/cli); anything else is a bug and keeps its traceback.
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


def first_line(error: BaseException) -> str:
    """The line of an error's message that says what happened.

    MXNet errors carry a stack trace: after the message, or before it ('Traceback ...', message
    last, as 'MXNetError: Check failed: ...'); the 'MXNetError: ' prefix is dropped.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line[len("MXNetError: "):] if line.startswith("MXNetError: ") else line
