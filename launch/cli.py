"""What the launch scripts share: the run record from the config flag, one-line errors, quiet
logging, the host allocator's settings and multi-process start-up."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging


def quiet_logging() -> None:
  """absl logging at WARNING unless --verbosity was given: Orbax logs every save at INFO."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def fail(program: str, message: str, status: int = 1):
  """Ends the command with one line on stderr: `<program>: error: <message>`."""
  print(f'{program}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


@contextlib.contextmanager
def one_line_errors(program: str):
  """Ends the command with `<program>: error: <message>` and exit status 1 for every problem a
  user can fix (bad input, config, dataset, checkpoint, output path), instead of a traceback;
  Ctrl-C ends it with status 130 and the library's word on where it stopped."""
  from ccc_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (errors.DataError, errors.CorpusError, errors.ConfigError, errors.CheckpointError,
          errors.TrainingDiverged, errors.OutputError, errors.InUse) as error:
    fail(program, str(error))
  except errors.Interrupted as error:
    fail(program, str(error), status=130)
  except KeyboardInterrupt:
    fail(program, 'interrupted (Ctrl-C); nothing was left half-written', status=130)


def _flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line from what absl and ml_collections raise while parsing flags."""
  text = str(error.args[0] if error.args else error)
  if isinstance(error, (AttributeError, KeyError)):  # an unknown --config.FIELD
    match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    name = match.group(2) if match else re.sub(r'\W', '', text.split('\\n')[0])
    given = next((a.split('=')[0] for a in argv
                  if a.startswith('--config.') and a.split('=')[0].endswith(f'.{name}')),
                 f'--config...{name}')
    hint = f"; did you mean '{match.group(1)}'?" if match else ''
    return f'{given}: no such config field{hint}'
  # config_flags puts the traceback of a config file's error inside its message: keep its last
  # line, the exception itself.
  raised = re.findall(r'^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$', text, flags=re.M)
  if raised:
    return raised[-1][1]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def run(main: Callable, program: str, keep_freed_memory: bool = True) -> None:
  """`app.run(main)`, but a bad flag (an unknown `--config.FIELD`, an unknown variant, a bad
  value) ends with one line and exit status 1 instead of a traceback.

  `keep_freed_memory`: before JAX starts, set the host allocator to keep freed memory and JAX's
  CPU dispatch to the calling thread (`ccc_jax.host_memory`), for the commands that run compiled
  programs again and again. Not
  for preparation, which is numpy work whose peak memory is measured and capped (freed memory
  goes back to the system there).
  """
  if keep_freed_memory:
    from ccc_jax import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory()
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as error:
      fail(program, _flag_error_message(error, argv))
  app.run(main, flags_parser=parse)


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
