"""Writing output files whole or not at all.

Every file ccc-jax writes for a user (traces CSV, plots, evaluation and summary JSON, the grid's
results) goes through `atomic_write`: the content is written to a temporary file in the same
folder and renamed over the target only when complete, so a full disk, a kill or an exception
leaves the previous file (or none), never a truncated one. An `OSError` comes back as one
`OutputError` line naming the file. `exclusive` keeps two processes from writing one workdir or
dataset at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
from typing import Any, Callable, Iterator

from ccc_jax.errors import InUse, OutputError


def _reason(error: OSError) -> str:
  if error.errno == errno.ENOSPC:
    return 'no space left on the device'
  if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return 'not writable (permission denied or read-only file system)'
  if error.errno == errno.EISDIR:
    return 'is a folder, not a file'
  if error.errno == errno.ENOTDIR:
    return 'a part of the path is a file, not a folder'
  return error.strerror or str(error)


def output_error(path: str | os.PathLike, error: OSError, what: str = 'cannot write') -> OutputError:
  """An `OutputError` whose message is `<path>: <what>: <reason>`."""
  return OutputError(error.errno, f'{os.fspath(path)}: {what}: {_reason(error)}')


def make_dirs(path: str | os.PathLike) -> str:
  """Creates folder `path` (and its parents) if needed; `OutputError` if it cannot."""
  path = os.fspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputError(errno.ENOTDIR, f'{path}: is a file, expected a folder')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise output_error(path, error, 'cannot create the folder') from None
  return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'w') -> Iterator[Any]:
  """`with atomic_write(path) as f:` writes `f` to a temporary file, renamed to `path` at the end.

  On any error the temporary file is removed and `path` is left as it was; an `OSError` is
  raised again as `OutputError` naming `path`.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise OutputError(errno.EISDIR, f'{path}: is a folder; give a file name')
  directory = make_dirs(os.path.dirname(os.path.abspath(path)))
  try:
    handle, temporary = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                                         dir=directory)
  except OSError as error:
    raise output_error(path, error) from None
  try:
    with os.fdopen(handle, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as error:
    _remove(temporary)
    raise output_error(path, error) from None
  except BaseException:
    _remove(temporary)
    raise


def _remove(path: str) -> None:
  with contextlib.suppress(OSError):
    os.remove(path)


def write_json(path: str | os.PathLike, data: Any) -> None:
  """`data` as indented JSON at `path`, atomically."""
  with atomic_write(path) as f:
    json.dump(data, f, indent=2)
    f.write('\n')


def write_with(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = 'w') -> None:
  """Calls `writer(file object)` inside `atomic_write` (for savefig, savetxt and the like)."""
  with atomic_write(path, mode) as f:
    writer(f)


@contextlib.contextmanager
def exclusive(lock_path: str, what: str) -> Iterator[None]:
  """Holds an exclusive lock on `lock_path` for the block; `InUse` if another process holds it.

  A `flock` lock: the kernel releases it when its process ends, however it ends, so a killed run
  never leaves `what` locked. The file says who holds it, for the message.
  """
  try:
    handle = open(lock_path, 'a+')
  except OSError as error:
    raise output_error(lock_path, error, 'cannot create the lock file') from None
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      raise InUse(f'{what} is in use by {holder}; wait for it to finish, or use another '
                  'folder') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'process {os.getpid()} on {socket.gethostname()}')
    handle.flush()
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
