"""Atomic file output: a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import os
import tempfile


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder.

    Example:
      >>> atomic_write_bytes("/tmp/model.tflite", b"...")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot write '{path}': folder '{folder}' does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would hide the file from others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_file_mode() -> int:
    """The permissions open() gives a new file under the current umask (0644 under umask 022).

    Example:
      >>> oct(new_file_mode())
      '0o644'
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
