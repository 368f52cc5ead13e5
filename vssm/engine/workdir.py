"""The lock that keeps two runs out of one work dir."""
import fcntl
import os
import socket
import sys
import time
from typing import Optional

from .errors import UserError

LOCK_NAME = ".vssm.lock"


class WorkDirLock:
    """An exclusive ``flock`` on ``work_dir/.vssm.lock``, a file holding the owner's pid, host, start time and command.

    The kernel releases the lock when its process dies, so the lock of a killed run is taken over by the next run; a
    second live run on the same work dir fails at once with a ``UserError`` naming the first. ``release`` removes the
    file (and a work dir left empty); a run that locked a file just removed by its owner sees that and tries again.
    """

    def __init__(self, work_dir: str):
        self.path = os.path.join(work_dir, LOCK_NAME)
        self._descriptor: Optional[int] = None

    def acquire(self) -> "WorkDirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(descriptor, 4096).decode(errors="replace").strip() or "an unknown process"
                os.close(descriptor)
                raise UserError(f"work dir {os.path.dirname(self.path)} is in use by another run ({owner}); wait for "
                                "it to end or choose another --work-dir") from None
            try:
                current = os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(descriptor).st_ino:
                break
            os.close(descriptor)  # locked a file that its owner removed meanwhile: lock the new one
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (f"pid {os.getpid()} on {socket.gethostname()} since "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}").encode())
        os.fsync(descriptor)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock; a work dir that holds nothing else (a run that failed before writing
        anything) is removed too."""
        if self._descriptor is None:
            return
        os.remove(self.path)
        folder = os.path.dirname(self.path)
        if not os.listdir(folder):
            os.rmdir(folder)
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None
