"""Test session set-up: 8 fake CPU devices (before jax is imported) and float64 opt-in helpers.

Every test runs in one process with `--xla_force_host_platform_device_count=8`, so multi-device
tests and one-device tests share compiled programs and a single JAX start-up.
"""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Compiled programs are shared across tests and with the subprocesses some tests start (the
# launch scripts): XLA compiles are most of the suite's time on 2 cores.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile
  # pytest-xdist's workers of one run share one cache (the run's id names it).
  _RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
  if _RUN:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(tempfile.gettempdir(),
                                                           f'ccc_jax_xla_cache_{_RUN}')
    os.makedirs(os.environ['JAX_COMPILATION_CACHE_DIR'], exist_ok=True)
  else:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ccc_jax_xla_cache_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **overrides):
  """The tiny synthetic run record (launch/configs/synthetic.py:tiny) reading `data_dir`."""
  from launch import cli
  from launch.configs import synthetic
  return cli.run_config(synthetic.get_config('tiny')).replace(data_dir=str(data_dir), **overrides)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """synthetic_avd/tiny prepared once per session with the real builder."""
  if os.environ.get('CCC_TINY_DATA_DIR'):
    return pathlib.Path(os.environ['CCC_TINY_DATA_DIR'])
  from datasets import prepare
  data_dir = tmp_path_factory.mktemp('tiny_data')
  prepare.prepare_dataset('synthetic_avd:tiny', data_dir=str(data_dir))
  return data_dir


@pytest.fixture(scope='session')
def tiny_workdir(tiny_data_dir, tmp_path_factory):
  """A workdir trained once per session on the tiny config (20 steps, checkpoints at 10, 20)."""
  from ccc_jax import train
  workdir = tmp_path_factory.mktemp('tiny_run') / 'run'
  summary = train.train_and_evaluate(tiny_config(tiny_data_dir), str(workdir))
  assert summary['step'] == 20
  return workdir
