"""Bad input, misuse and interruption (issue 12's table): each case ends with one line naming the
file or field and the problem, a non-zero exit status, and nothing half-written.

Each row runs the command's library call inside `launch.cli.one_line_errors` (what every launch
script runs its work in) and checks the exit status, that stderr is exactly one line starting
`<program>: error:` with the expected words, and what is (not) left on disk. Flag parsing is the
one step before that wrapper, so its rows run the real command line in a subprocess.

The tests run as root in CI, where permission bits do not stop a write: read-only folders are
simulated by making `os.access` say so (the check the library makes before writing), and full
disks by an `OSError(ENOSPC)` raised at the write.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import soundfile

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import files
from ccc_jax import inference
from ccc_jax import input_pipeline
from ccc_jax import postprocess
from ccc_jax import train
from conftest import REPO, tiny_config
from datasets import prepare
from launch import cli
from launch import text
from tests import fixtures


@dataclasses.dataclass
class Case:
  program: str
  run: object  # callable: the command's work
  expected: tuple[str, ...]  # words the one line must hold
  status: int = 1
  left: object = None  # callable: checks what is on disk afterwards


def _one_line(capsys, case: Case) -> str:
  with pytest.raises(SystemExit) as exited:
    with cli.one_line_errors(case.program):
      case.run()
  err = capsys.readouterr().err
  assert exited.value.code == case.status, err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith(f'{case.program}: error: '), lines[0]
  for word in case.expected:
    assert word in lines[0], (word, lines[0])
  if case.left is not None:
    case.left()
  return lines[0]


def _absent(*paths):
  def check():
    for path in paths:
      assert not os.path.exists(path), path
  return check


def _no_temporaries(folder):
  def check():
    leftovers = [name for name in os.listdir(folder) if name.endswith('.tmp')]
    assert not leftovers, leftovers
  return check


# ---------------------------------------------------------------------------------------------
# Shared material.


@pytest.fixture
def workdir(tiny_workdir, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(tiny_workdir, copy)
  return copy


def _predict(workdir, audio, output, mocap=None):
  return lambda: inference.predict_recording(str(workdir), str(audio), str(output),
                                             mocap=None if mocap is None else str(mocap))


def _recola(tmp_path, **kwargs):
  root = str(tmp_path / 'package')
  fixtures.write_recola(root, seconds=6.0, num_egemaps=1, **kwargs)
  return root


def _prepare(dataset, data_dir, manual_dir=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # TFDS's progress bars share stderr with the one error line
  return lambda: prepare.prepare_dataset(dataset, str(data_dir), manual_dir)


def _rewrite_lines(path, edit):
  with open(path, newline='') as f:
    lines = f.read().split('\r\n')
  edit(lines)
  with open(path, 'w', newline='') as f:
    f.write('\r\n'.join(lines))


# ---------------------------------------------------------------------------------------------
# Wrong or unsafe.


def test_second_training_on_a_busy_workdir_is_refused(workdir, tiny_data_dir, capsys):
  lock = workdir / '.lock.process0'
  with files.exclusive(str(lock), f'workdir {workdir}'):  # another run holds it
    before = sorted(os.listdir(workdir / 'checkpoints' / 'latest'))
    _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
        tiny_config(tiny_data_dir, num_steps=30), str(workdir)),
        (f'workdir {workdir} is in use by process {os.getpid()}',)))
    assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == before


def test_truncated_wav_is_named_by_its_header(tmp_path, capsys):
  root = _recola(tmp_path)
  wav = os.path.join(root, 'recordings_audio', 'test_1.wav')
  size = os.path.getsize(wav)
  with open(wav, 'r+b') as f:
    f.truncate(size // 2)
  _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', root),
                         (wav, 'shorter than its header says', 'truncated'),
                         left=_absent(tmp_path / 'data' / 'recola')))


def test_train_wav_shorter_than_its_labels_is_refused(tmp_path, capsys):
  root = _recola(tmp_path)
  wav = os.path.join(root, 'recordings_audio', 'train_2.wav')
  audio, rate = soundfile.read(wav)
  soundfile.write(wav, audio[:len(audio) - int(0.57 * rate)], rate)  # 0.57 s short
  arff = os.path.join(root, 'ratings_gold_standard', 'arousal', 'train_2.arff')
  _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', root),
                         (arff, wav, 'must agree within 0.04 s'),
                         left=_absent(tmp_path / 'data' / 'recola')))


def test_ratings_with_a_rater_missing_are_refused(tmp_path, capsys):
  root = _recola(tmp_path)
  path = os.path.join(root, 'ratings_individual', 'valence', 'dev_1.csv')
  with open(path) as f:
    rows = [line.rstrip('\n').split(';') for line in f]
  with open(path, 'w') as f:
    f.writelines(';'.join(row[:-1]) + '\n' for row in rows)  # drop rater FF3
  _one_line(capsys, Case('prepare', _prepare('recola:raters_mean', tmp_path / 'data', root),
                         (path, 'FM1, FM2, FM3, FF1, FF2, FF3', 'missing: FF3'),
                         left=_absent(tmp_path / 'data' / 'recola')))


def test_predict_on_a_full_disk_leaves_no_partial_file(workdir, tmp_path, capsys, monkeypatch):
  wav, mocap = fixtures.write_recording(tmp_path)
  output = tmp_path / 'out' / 'talk.csv'

  def full_disk(fd):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(files.os, 'fsync', full_disk)
  _one_line(capsys, Case('predict', _predict(workdir, wav, output, mocap),
                         (str(output), 'no space left on the device'),
                         left=lambda: (_absent(output)(), _no_temporaries(output.parent)())))


@pytest.mark.parametrize('field, value, message', [
    ('num_steps', 0, 'num_steps must be positive, got 0'),
    ('num_steps', -5, 'num_steps must be positive, got -5'),
    ('global_batch', 0, 'global_batch must be positive, got 0'),
    ('data_placement', 'gpu', "data_placement must be one of auto, device, host; got 'gpu'"),
])
def test_impossible_config_values_are_refused(field, value, message, capsys):
  from launch.configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config('tiny')
  config[field] = value
  _one_line(capsys, Case('train', lambda: cli.run_config(config), (message,)))


def test_resume_with_another_num_steps_is_refused_with_the_reason(workdir, tiny_data_dir, capsys):
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(tiny_data_dir, num_steps=40), str(workdir)),
      ('num_steps: 20 -> 40', 'learning-rate', '--config.optimizer.decay_steps')))


def test_resume_after_the_dataset_moved_continues(workdir, tiny_data_dir, tmp_path):
  moved = tmp_path / 'renamed_data'
  shutil.copytree(tiny_data_dir, moved)
  summary = train.train_and_evaluate(tiny_config(moved), str(workdir))
  assert summary['step'] == 20


def test_metrics_log_has_one_row_per_step_after_a_resume(workdir, tiny_data_dir):
  log = workdir / 'metrics.jsonl'
  rows = log.read_text().splitlines()
  # What a run killed after its step-20 checkpoint would have logged before dying, cut mid-line.
  log.write_text('\n'.join(rows + [json.dumps({'step': 25, 'kind': 'train', 'loss': 1.0}),
                                   '{"step": 30, "ki']) + '\n')
  train.train_and_evaluate(tiny_config(tiny_data_dir), str(workdir))
  records = [json.loads(line) for line in log.read_text().splitlines()]
  keys = [(r['step'], r['kind']) for r in records]
  assert len(keys) == len(set(keys)) and max(r['step'] for r in records) == 20


def test_leftovers_of_a_killed_prepare_are_removed(tmp_path, tiny_data_dir):
  data_dir = tmp_path / 'data'
  leftover = data_dir / 'synthetic_avd' / 'tiny' / 'incomplete.AbCdEf'
  leftover.mkdir(parents=True)
  (leftover / 'synthetic_avd-train.array_record-00000-of-00001').write_bytes(b'\0' * 1000)
  dead = pathlib.Path(prepare.tempfile.gettempdir()) / f'{prepare._TEMPORARY_PREFIX}999999_x'
  dead.mkdir(exist_ok=True)
  prepare.prepare_dataset('synthetic_avd:tiny', str(data_dir))
  assert not leftover.exists() and not dead.exists()
  assert sorted(os.listdir(data_dir / 'synthetic_avd' / 'tiny')) == ['1.3.0']


# ---------------------------------------------------------------------------------------------
# One line instead of a traceback.


@pytest.mark.parametrize('content, expected', [
    (b'\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary', 'not a UTF-8 text file'),
    ('time,HEAD_x\n0,caf\xe9\n'.encode('latin-1'), 'not a UTF-8 text file (byte 17, line 2)'),
])
def test_non_utf8_mocap_is_named(workdir, tmp_path, capsys, content, expected):
  wav, _ = fixtures.write_recording(tmp_path)
  mocap = tmp_path / 'bad_mocap.csv'
  mocap.write_bytes(content)
  output = tmp_path / 'out.csv'
  _one_line(capsys, Case('predict', _predict(workdir, wav, output, mocap),
                         (str(mocap), expected), left=_absent(output)))


def test_a_wav_passed_as_mocap_is_named(workdir, tmp_path, capsys):
  wav, _ = fixtures.write_recording(tmp_path)
  output = tmp_path / 'out.csv'
  _one_line(capsys, Case('predict', _predict(workdir, wav, output, wav),
                         (str(wav), 'not a UTF-8 text file', 'expected a mocap CSV'),
                         left=_absent(output)))


def test_a_byte_order_mark_in_the_mocap_header_is_accepted(workdir, tmp_path):
  wav, mocap = fixtures.write_recording(tmp_path)
  with_bom = tmp_path / 'bom_mocap.csv'
  with_bom.write_bytes(b'\xef\xbb\xbf' + mocap.read_bytes())
  summary = inference.predict_recording(str(workdir), str(wav), str(tmp_path / 'out.csv'),
                                        mocap=str(with_bom))
  assert summary['frames'] == 50


def test_data_dir_that_is_a_file_or_not_prepared(tmp_path, tiny_data_dir, capsys):
  not_a_folder = tmp_path / 'data_file'
  not_a_folder.write_text('x')
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(not_a_folder), str(tmp_path / 'run1')), (str(not_a_folder), 'is a file')))
  empty = tmp_path / 'empty_data'
  empty.mkdir()
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(empty), str(tmp_path / 'run2')),
      ('synthetic_avd:tiny is not prepared under',
       f'python -m launch.prepare --dataset=synthetic_avd:tiny --data_dir={empty}')))


def test_read_only_data_dir_in_prepare(tmp_path, capsys, monkeypatch):
  data_dir = tmp_path / 'readonly'
  data_dir.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: False if os.fspath(path) == str(
      data_dir) else real_access(path, mode))
  _one_line(capsys, Case('prepare', _prepare('synthetic_avd:tiny', data_dir),
                         (f'data_dir {data_dir}: not writable',),
                         left=_absent(data_dir / 'synthetic_avd')))


def test_workdir_that_is_a_file_or_read_only(tmp_path, tiny_data_dir, capsys, monkeypatch):
  a_file = tmp_path / 'workdir_file'
  a_file.write_text('x')
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(tiny_data_dir), str(a_file)), (str(a_file), 'is a file, expected a folder')))
  read_only = tmp_path / 'readonly_run'
  read_only.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: False if os.fspath(path) == str(
      read_only) else real_access(path, mode))
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(tiny_data_dir), str(read_only)), (f'workdir {read_only}: not writable',),
      left=lambda: os.listdir(read_only) == []))


def test_output_path_that_is_a_folder(workdir, tmp_path, capsys):
  wav, mocap = fixtures.write_recording(tmp_path)
  folder = tmp_path / 'outputs'
  folder.mkdir()
  _one_line(capsys, Case('predict', _predict(workdir, wav, folder, mocap),
                         (str(folder), 'is a folder; give a file name')))


def test_full_disk_in_prepare_leaves_no_dataset(tmp_path, capsys, monkeypatch):
  from datasets import common  # pylint: disable=g-import-not-at-top
  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  # The first write of a shard (the worker processes have written every recording's windows).
  monkeypatch.setattr(common.tfds_writer.ExampleWriter, 'write', full_disk)
  data_dir = tmp_path / 'data'
  _one_line(capsys, Case('prepare', _prepare('synthetic_avd:tiny', data_dir),
                         ('no space left on the device', 'cannot write the prepared dataset'),
                         left=_absent(data_dir / 'synthetic_avd')))


def test_full_disk_in_training_keeps_the_last_checkpoint(tiny_data_dir, tmp_path, capsys,
                                                         monkeypatch):
  original = checkpoints.Checkpoints.save_latest
  calls = {'n': 0}

  def save_then_fill_the_disk(self, step, *args):
    calls['n'] += 1
    if calls['n'] == 2:  # the step-20 save finds the disk full
      raise OSError(errno.ENOSPC, 'No space left on device')
    return original(self, step, *args)
  monkeypatch.setattr(checkpoints.Checkpoints, 'save_latest', save_then_fill_the_disk)
  workdir = tmp_path / 'run'
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(tiny_data_dir), str(workdir)), (str(workdir), 'no space left on the device')))
  assert checkpoints.restore_model(str(workdir), 'latest').step == 10


@pytest.mark.slow
@pytest.mark.parametrize('flag, expected', [
    ('--config.model.gru_hiden=3',
     "train: error: --config.model.gru_hiden: no such config field; did you mean 'gru_hidden'?"),
    ('--config=launch/configs/synthetic.py:tiny,tny',
     "train: error: config: unknown variant 'tny'; did you mean 'tiny'?"),
])
def test_unknown_config_field_or_variant_is_one_line(tmp_path, flag, expected):
  command = [sys.executable, '-m', 'launch.train', '--config=launch/configs/synthetic.py:tiny',
             flag, f'--workdir={tmp_path / "run"}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert result.stderr.startswith(expected), result.stderr
  assert not (tmp_path / 'run').exists()


def test_a_damaged_prepared_shard_is_named(workdir, tiny_data_dir, tmp_path, capsys):
  damaged = tmp_path / 'damaged_data'
  shutil.copytree(tiny_data_dir, damaged)
  shard = next((damaged / 'synthetic_avd' / 'tiny' / '1.3.0').glob('*-dev.array_record-*'))
  data = bytearray(shard.read_bytes())
  data[100_000:200_000] = b'\x5a' * 100_000
  shard.write_bytes(bytes(data))
  _one_line(capsys, Case('evaluate', lambda: evaluation.evaluate_split(
      str(workdir), 'dev', data_dir=str(damaged)),
      (str(shard), 'dev split is damaged', 'prepare it again'),
      left=_absent(workdir / 'eval_dev_step20.json')))


def test_empty_manual_dir(tmp_path, capsys):
  empty = tmp_path / 'AVEC_2016'
  empty.mkdir()
  line = _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', str(empty)),
                                (f'manual_dir {empty}: does not exist or is empty',)))
  assert line.endswith('(datasets/README.md says which)')  # the sentence is whole


def test_creativeit_folder_one_level_too_deep(tmp_path, capsys):
  root = tmp_path / 'download'
  fixtures.write_creativeit(str(root / 'creativeit'),
                            {('session1', 'perf1'): ('actor1', 'actor2', 'actor3')}, seconds=2.0)
  _one_line(capsys, Case('prepare', _prepare('creativeit', tmp_path / 'data', str(root)),
                         ('1 folder level(s) deeper than expected',
                          f'pass --manual_dir={root / "creativeit"}',
                          '<manual_dir>/<session>/<performance>/<actor>/'),
                         left=_absent(tmp_path / 'data' / 'creativeit')))


def test_arff_problems_are_reported_by_file_line(tmp_path, capsys):
  root = _recola(tmp_path)
  path = os.path.join(root, 'ratings_gold_standard', 'arousal', 'train_1.arff')

  def bad_value(lines):
    lines[20] = lines[20].rsplit(',', 1)[0] + ',abc'
  _rewrite_lines(path, bad_value)
  bad = _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', root),
                               (path, 'line 21', '"abc", not a number')))

  def nan_value(lines):
    lines[20] = lines[20].rsplit(',', 1)[0] + ',NaN'
  _rewrite_lines(path, nan_value)
  nan = _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', root),
                               (path, 'line 21', 'NaN')))
  assert bad.split('line ')[1][:3] == nan.split('line ')[1][:3]

  def short_row(lines):
    lines[20] = lines[20].rsplit(',', 1)[0]
  _rewrite_lines(path, short_row)
  short = _one_line(capsys, Case('prepare', _prepare('recola', tmp_path / 'data', root),
                                 (path, 'line 21 has 2 values; the header declares 3')))
  assert 'usecols' not in short


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tiny_data_dir, tmp_path, capsys,
                                                        monkeypatch):
  original = input_pipeline.SeedIterators.__next__
  calls = {'n': 0}

  def interrupted(self):
    calls['n'] += 1
    if calls['n'] == 13:  # while step 13 waits for its batch
      raise KeyboardInterrupt
    return original(self)
  monkeypatch.setattr(input_pipeline.SeedIterators, '__next__', interrupted)
  workdir = tmp_path / 'run'
  _one_line(capsys, Case('train', lambda: train.train_and_evaluate(
      tiny_config(tiny_data_dir, data_placement='host'), str(workdir)),
      ('interrupted at step 12', 'keeps its checkpoint of step 10', 'run the same command to '
       'resume'), status=130))
  assert checkpoints.restore_model(str(workdir), 'latest').step == 10


def test_a_folder_given_as_audio(workdir, tmp_path, capsys):
  _, mocap = fixtures.write_recording(tmp_path)
  folder = tmp_path / 'recordings'
  folder.mkdir()
  _one_line(capsys, Case('predict', _predict(workdir, folder, tmp_path / 'out.csv', mocap),
                         (str(folder), 'is a folder; expected an audio file'),
                         left=_absent(tmp_path / 'out.csv')))


def test_a_recording_shorter_than_the_tuned_delay_is_told(workdir, tmp_path):
  wav, mocap = fixtures.write_recording(tmp_path, seconds=1.0)
  step = checkpoints.restore_model(str(workdir)).step
  delayed = postprocess.TaskPostProcessing(delay_frames=40)  # 1.6 s
  postprocess.save(str(workdir), step, postprocess.PostProcessing(
      {task: delayed for task in ('activation', 'valence', 'dominance')}), {})
  summary = inference.predict_recording(str(workdir), str(wav), str(tmp_path / 'out.csv'),
                                        mocap=str(mocap))
  printed = text.prediction(summary)
  assert printed.count('warning: ') == 3
  assert 'lasts 1.00 s, not longer than the 1.60 s delay tuned on dev' in printed


def test_an_impossible_synthetic_size_is_one_line(tmp_path, capsys):
  _one_line(capsys, Case('prepare', _prepare('synthetic_avd:tiny,num_speakers=2', tmp_path / 'd'),
                         ('synthetic_avd config tiny_num-speakers-2', '2 speakers cannot give'),
                         left=_absent(tmp_path / 'd' / 'synthetic_avd')))
