"""What the launch scripts share: the run record from the config flag, one-line errors, quiet
logging and multi-process start-up."""

from __future__ import annotations

import contextlib
import sys

from absl import flags
from absl import logging


def quiet_logging() -> None:
  """absl logging at WARNING unless --verbosity was given: Orbax logs every save at INFO."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def one_line_errors(program: str):
  """Ends the command with `<program>: error: <message>` and exit status 1 for every problem a
  user can fix (bad input, config, dataset, checkpoint, output path), instead of a traceback."""
  from ccc_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (errors.DataError, errors.CorpusError, errors.ConfigError, errors.CheckpointError,
          errors.TrainingDiverged, errors.OutputError) as error:
    print(f'{program}: error: {error}', file=sys.stderr, flush=True)
    sys.exit(1)


def run_config(config_dict):
  """The typed run record of the `--config` flag's value (`ccc_jax.config.RunConfig`)."""
  from ccc_jax.config import RunConfig  # pylint: disable=g-import-not-at-top
  return RunConfig.from_mapping(config_dict.to_dict())


def initialize_distributed(coordinator_address, num_processes, process_id, auto: bool) -> None:
  """Joins a multi-process run when asked; a single process needs nothing."""
  import jax  # pylint: disable=g-import-not-at-top
  explicit = coordinator_address is not None or num_processes is not None
  if not explicit and not auto:
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise SystemExit('error: multi-host needs --coordinator_address, --num_processes and '
                     '--process_id together')
  # CPU devices of different processes talk through gloo (accelerators use their own links).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
