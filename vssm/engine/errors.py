"""Errors caused by the user's input (config, paths, checkpoints), reported as one line by the command-line tools."""
from vssm.data import DataError


class UserError(RuntimeError):
    """Bad input: the message says what is wrong and where, in one line."""


class TrainingInterrupted(Exception):
    """A run stopped by SIGTERM or SIGINT after writing a resumable checkpoint; the message says where and how to go on.

    Attributes:
        signum: The signal's number (the command line exits with 128 + signum, as a shell reports a killed process).
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


USER_ERRORS = (UserError, DataError)


def one_line(error: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it with a traceback inside."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    for cls in USER_ERRORS:  # a worker's traceback text ends with 'vssm.data.errors.DataError: message'
        qualified = f"{cls.__module__}.{cls.__name__}: "
        if last.startswith(qualified):
            return last[len(qualified):]
    return last
