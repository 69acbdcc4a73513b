"""The exceptions ccc-jax raises for problems a user can fix, each named for what happened.

Every message names the file, folder or field at fault and says what is wrong with it; the
command lines print it as one line (no traceback) and exit with status 1.
"""


class DataError(ValueError):
  """A user-supplied data file is missing, unreadable, or disagrees with the expected format."""


class CorpusError(ValueError):
  """A prepared dataset is missing, incomplete, or lacks what the config asks for."""


class ConfigError(ValueError):
  """A config field, variant, or dataset spec that does not exist or has a value it cannot take."""


class CheckpointError(ValueError):
  """A workdir has no such checkpoint, holds another run, or is in use by another process."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


class OutputError(OSError):
  """An output file or folder cannot be written (full disk, read-only, a folder in the way).

  Made as `OutputError(errno, message)`; it reads as the message alone.
  """

  def __str__(self) -> str:
    return str(self.strerror)


class Interrupted(RuntimeError):
  """A run was stopped by the user (Ctrl-C); the message says where and how to go on."""


class InUse(RuntimeError):
  """A workdir or a dataset is being written by another process right now."""
