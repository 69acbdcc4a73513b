"""What the launch scripts share: quiet logging and multi-process start-up."""

from absl import flags
from absl import logging
import jax


def quiet_logging() -> None:
  """absl logging at WARNING unless --verbosity was given: Orbax logs every save at INFO."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def initialize_distributed(coordinator_address, num_processes, process_id, auto: bool) -> None:
  """Joins a multi-process run when asked; a single process needs nothing."""
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
