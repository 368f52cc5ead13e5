"""The error a dataset raises for bad input (missing folder, unreadable image), with a message naming the path."""


class DataError(RuntimeError):
    """A dataset cannot be read; the message names the path and the cause."""
