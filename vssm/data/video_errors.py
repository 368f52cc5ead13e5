"""The named errors of the video data: each a ``vssm.data.DataError`` whose message names the file and the cause."""
from .errors import DataError


class AnnotationError(DataError):
    """An annotation file cannot be used: missing, malformed line, no entries."""


class EmptyAnnotationError(AnnotationError):
    """An annotation file (or the chosen split of it) lists no video."""


class UnknownLabelError(AnnotationError):
    """A label that is not in the class list (a K400 class name, an SSv2 template, an HMDB-51 class)."""


class VideoError(DataError):
    """One video cannot be used. ``path`` is the file, ``reason`` a short word for the report."""

    reason = "error"

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class VideoNotFoundError(VideoError):
    """The annotation names a file that does not exist."""

    reason = "missing"


class VideoDecodeError(VideoError):
    """decord cannot open or decode the file (corrupt, truncated, not a video)."""

    reason = "decode"


class VideoTimeoutError(VideoDecodeError):
    """Decoding took longer than the per-video time limit (decord hangs in native code on some files); the worker
    process was killed and replaced."""

    reason = "timeout"


class VideoTooShortError(VideoError):
    """The video has fewer frames than one clip needs (raised only where the config says so)."""

    reason = "short"
