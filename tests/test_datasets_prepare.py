"""The `python -m launch.prepare` command: configs, overrides, summary and usage errors."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
import tensorflow_datasets as tfds

from datasets.synthetic_avd import synthetic_avd_dataset_builder
from ccc_jax.config import DatasetSpec
from ccc_jax.errors import ConfigError
from datasets import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags, env=None):
  return subprocess.run([sys.executable, '-m', 'launch.prepare', *flags], cwd=REPO,
                        capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_command_line_prepares_with_overrides_and_prints_a_summary(tmp_path):
  data_dir = str(tmp_path / 'data')
  # The command's temporary folder, and its workers': short, as the system's is, since the
  # workers' sockets live there and a socket's path has at most 107 bytes (under pytest's
  # folders it failed with "AF_UNIX path too long" once they were numbered in the hundreds).
  temporary = pathlib.Path(tempfile.mkdtemp(prefix='ccc_prep_'))
  try:
    result = _run('--dataset=synthetic_avd:tiny,window=60,hop=30', f'--data_dir={data_dir}',
                  env=dict(os.environ, TMPDIR=str(temporary)))
    assert result.returncode == 0, result.stderr
    assert not list(temporary.iterdir())  # nothing left behind, TFDS's own folders included
  finally:
    shutil.rmtree(temporary)
  name = 'synthetic_avd/tiny_window-60_hop-30'
  assert 'Prepared synthetic_avd:tiny,window=60,hop=30 in ' in result.stdout
  assert 'train              4        64    0.022' in result.stdout  # 4 x 16 windows of 60 frames
  assert 's per hour of audio' in result.stdout
  assert 'train 4/4' in result.stderr  # per-recording progress
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata
  assert (metadata['window'], metadata['hop']) == (60, 30)
  again = _run('--dataset=synthetic_avd:tiny,window=60,hop=30', f'--data_dir={data_dir}')
  assert again.returncode == 0 and 'Already prepared (nothing done): synthetic_avd:tiny' in again.stdout
  assert tfds.data_source(name, data_dir=data_dir)['test'][0]['labels'].shape == (60, 3)


@pytest.mark.slow
def test_usage_errors_exit_non_zero_without_a_traceback(tmp_path):
  data_dir = str(tmp_path / 'data')
  missing_manual_dir = _run('--dataset=recola', f'--data_dir={data_dir}')
  assert missing_manual_dir.returncode == 2
  assert '--manual_dir is required for recola' in missing_manual_dir.stderr
  unknown_config = _run('--dataset=synthetic_avd:huge', f'--data_dir={data_dir}')
  assert unknown_config.returncode == 1
  assert "synthetic_avd has no config 'huge'" in unknown_config.stderr
  for result in (missing_manual_dir, unknown_config):
    assert 'Traceback' not in result.stderr
  assert not os.path.exists(data_dir)


def test_prepare_dataset_rejects_unknown_names(tmp_path):
  with pytest.raises(ConfigError, match='unknown dataset'):
    prepare.prepare_dataset('iemocap', str(tmp_path))
  with pytest.raises(ConfigError, match="no config 'huge'"):
    prepare.prepare_dataset('synthetic_avd:huge', str(tmp_path))


def test_make_config_types_and_names_overrides():
  builder = synthetic_avd_dataset_builder.Builder

  def config(spec):
    return prepare.make_config(builder, DatasetSpec.parse(spec))
  assert config('synthetic_avd').name == 'default'
  changed = config('synthetic_avd:tiny,session_seconds=12.5,seed=3')
  assert (changed.name, changed.session_seconds, changed.seed) == (
      'tiny_session-seconds-12-5_seed-3', 12.5, 3)
  assert changed.num_speakers == 6  # the rest of the named config is kept
  with pytest.raises(ConfigError, match="unknown field 'speakers'; did you mean 'num_speakers'"):
    config('synthetic_avd:tiny,speakers=3')
  with pytest.raises(ConfigError, match='seed'):
    config('synthetic_avd:tiny,seed=many')
  with pytest.raises(ConfigError, match='names configs'):
    config('synthetic_avd:tiny,window')
  with pytest.raises(ConfigError, match='would leave frames uncovered'):
    config('synthetic_avd:tiny,hop=120')
