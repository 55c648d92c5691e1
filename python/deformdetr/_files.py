"""Files written atomically: into a temporary file beside the target, renamed over it. A reader
never sees half a file, and a failure (or Ctrl-C) at any moment leaves the old file or the new
one, and no temporary file. Checkpoints, KITTI label/result/calib files and the result zip are
written so."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Callable, Union

__all__ = ["write_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


def write_atomic(path: PathLike, write: Callable[[IO], None], text: bool = False, durable: bool = False) -> None:
    """Calls ``write(handle)`` on a temporary file in ``path``'s folder (created if need be),
    opened for ``text`` or bytes, then renames it over ``path``. ``durable``: the file and the
    rename are flushed to the disk before returning (checkpoints: a crash of the machine keeps
    them too). Any exception is re-raised once the temporary file is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file private (0600); the output is as readable as any other file.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with os.fdopen(handle, "w" if text else "wb") as tmp:
            write(tmp)
            if durable:
                tmp.flush()
                os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise
    if durable:
        _fsync_folder(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    # The rename itself is durable only once the folder entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
