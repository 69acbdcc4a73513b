"""The recola builder, prepared from files in the published AVEC 2016 format and read back."""

import json
import os
import shutil
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from ccc_jax import audio_io
from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax.errors import DataError
from datasets import prepare
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = 6.2  # 155 label frames: windows start at 0, 50, 100; the last one is padded
NUM_FRAMES = 155
# Stored audio is 16-bit PCM: within half a step of the float waveform (plus float rounding).
PCM_TOLERANCE = 0.5 / 32768 + 1e-6


@pytest.fixture(scope='module')
def recola(tmp_path_factory):
  """The fixture package and a data_dir with its default, raters_mean and egemaps_functionals
  configs."""
  root = str(tmp_path_factory.mktemp('recola_package'))
  package = fixtures.write_recola(root, seconds=SECONDS)
  data_dir = str(tmp_path_factory.mktemp('recola_data'))
  for config in ('default', 'raters_mean', 'egemaps_functionals'):
    prepare.prepare_dataset(f'recola:{config}', data_dir, manual_dir=root)
  return package, data_dir


def _windows(source, recording):
  """{start: example} of one recording (storage order is shuffled: locate by recording+start)."""
  found = {}
  for index in range(len(source)):
    example = source[index]
    if example['recording'].decode() == recording:
      found[int(example['start'])] = example
  return found


def _expected_audio(package, recording):
  """The fixture's audio as the model should get it: channel mean, 16 kHz (librosa), 155 frames."""
  mono = package.audio[recording].mean(axis=1)
  audio = librosa.resample(mono, orig_sr=package.sample_rate, target_sr=16000, res_type='soxr_hq')
  return np.pad(audio, (0, NUM_FRAMES * 640))[:NUM_FRAMES * 640]


def test_metadata(recola):
  _, data_dir = recola
  metadata = tfds.builder('recola', data_dir=data_dir).info.metadata
  assert metadata['tasks'] == ['arousal', 'valence']
  assert metadata['modalities'] == ['audio', 'logmel', 'egemaps']
  assert len(metadata['stats']['egemaps']['mean']) == egemaps.NUM_EGEMAPS
  assert metadata['labelled_splits'] == ['train', 'dev']
  assert (metadata['sample_rate'], metadata['label_rate']) == (16000, 25)
  assert (metadata['window'], metadata['hop']) == (100, 50)
  # 156 label rows (0.00 ... 6.20 s) for 6.2 s of audio: the row at 6.20 s has no audio.
  assert metadata['recordings'] == {'train': {'train_1': NUM_FRAMES, 'train_2': NUM_FRAMES},
                                    'dev': {'dev_1': NUM_FRAMES}, 'test': {'test_1': NUM_FRAMES}}
  assert metadata['gold_standard'] == 'arff'
  functionals = tfds.builder('recola/egemaps_functionals', data_dir=data_dir).info.metadata
  assert functionals['modalities'] == ['audio', 'logmel', 'egemaps', 'egemaps_functionals']
  # 4 arousal + 4 valence features
  assert len(functionals['stats']['egemaps_functionals']['mean']) == 8


def test_windows_match_the_source_files(recola):
  package, data_dir = recola
  sources = tfds.data_source('recola', data_dir=data_dir)
  assert {split: len(source) for split, source in sources.items()} == {
      'train': 6, 'dev': 3, 'test': 3}
  windows = _windows(sources['train'], 'train_2')
  assert sorted(windows) == [0, 50, 100]
  audio = _expected_audio(package, 'train_2')
  logmel = features.log_mel(audio)

  middle = windows[50]
  np.testing.assert_array_equal(middle['mask'], np.ones(100))
  np.testing.assert_allclose(middle['labels'], package.gold['train_2'][50:150], atol=1e-6)
  np.testing.assert_allclose(audio_io.from_pcm16(middle['audio']),
                             audio[50 * 640:150 * 640], atol=PCM_TOLERANCE)
  np.testing.assert_allclose(middle['logmel'], logmel[200:600], atol=1e-3)
  # From the float waveform the builder reads (before its 16-bit storage), so bit for bit what
  # egemaps_lld gives for it.
  waveform = audio_io.load_audio(os.path.join(package.root, 'recordings_audio', 'train_2.wav'))
  lld = egemaps.egemaps_lld(waveform[:NUM_FRAMES * 640], NUM_FRAMES)
  np.testing.assert_array_equal(middle['egemaps'], lld[200:600])
  np.testing.assert_array_equal(windows[100]['egemaps'][:220], lld[400:])
  np.testing.assert_array_equal(windows[100]['egemaps'][220:], 0.0)  # padding past the end

  last = windows[100]  # frames 100..199 of a 155-frame recording
  np.testing.assert_array_equal(last['mask'], (np.arange(100) < 55).astype(np.float32))
  np.testing.assert_allclose(last['labels'][:55], package.gold['train_2'][100:155], atol=1e-6)
  np.testing.assert_array_equal(last['labels'][55:], 0.0)
  np.testing.assert_allclose(audio_io.from_pcm16(last['audio'][:55 * 640]),
                             audio[100 * 640:], atol=PCM_TOLERANCE)
  np.testing.assert_array_equal(last['audio'][55 * 640:], 0.0)


def test_test_split_has_audio_and_no_labels(recola):
  package, data_dir = recola
  windows = _windows(tfds.data_source('recola', data_dir=data_dir)['test'], 'test_1')
  assert sorted(windows) == [0, 50, 100]
  audio = _expected_audio(package, 'test_1')
  np.testing.assert_allclose(audio_io.from_pcm16(windows[0]['audio']), audio[:64000],
                             atol=PCM_TOLERANCE)
  for window in windows.values():
    np.testing.assert_array_equal(window['labels'], 0.0)


def test_raters_mean_and_egemaps_functionals_configs(recola):
  package, data_dir = recola
  raters = _windows(tfds.data_source('recola/raters_mean', data_dir=data_dir)['dev'], 'dev_1')
  np.testing.assert_allclose(raters[0]['labels'], package.ratings['dev_1'][:100].mean(axis=1),
                             atol=1e-6)
  functionals = _windows(
      tfds.data_source('recola/egemaps_functionals', data_dir=data_dir)['test'], 'test_1')
  np.testing.assert_allclose(functionals[50]['egemaps_functionals'],
                             package.egemaps['test_1'][50:150], rtol=1e-6)


def test_statistics_come_from_the_training_split_only(recola):
  package, data_dir = recola
  stats = tfds.builder('recola', data_dir=data_dir).info.metadata['stats']
  train_audio = [_expected_audio(package, name) for name in ('train_1', 'train_2')]
  joined = np.concatenate(train_audio)
  assert stats['audio']['mean'] == pytest.approx(joined.mean(), abs=1e-6)
  assert stats['audio']['std'] == pytest.approx(joined.std(), rel=1e-4)
  logmel = np.concatenate([features.log_mel(audio) for audio in train_audio])
  np.testing.assert_allclose(stats['logmel']['mean'], logmel.mean(axis=0), atol=1e-3)
  np.testing.assert_allclose(stats['logmel']['std'], logmel.std(axis=0), rtol=1e-3)


@pytest.mark.slow
def test_a_fresh_process_reads_data_and_metadata_without_our_builders(recola):
  _, data_dir = recola
  code = (
      'import json, sys, tensorflow_datasets as tfds\n'
      f'data_dir = {data_dir!r}\n'
      'metadata = dict(tfds.builder("recola/egemaps_functionals", data_dir=data_dir)'
      '.info.metadata)\n'
      'example = tfds.data_source("recola", data_dir=data_dir)["dev"][0]\n'
      'assert not any(name.startswith("datasets") for name in sys.modules)\n'
      'print(json.dumps({"metadata": metadata, "shapes": {k: list(getattr(v, "shape", ()))\n'
      '                  for k, v in example.items()}}))\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=str(os.path.dirname(data_dir)),
                          capture_output=True, text=True, check=True)
  read_back = json.loads(result.stdout.strip().splitlines()[-1])
  in_process = tfds.builder('recola/egemaps_functionals', data_dir=data_dir).info.metadata
  assert read_back['metadata'] == json.loads(json.dumps(dict(in_process)))
  assert read_back['shapes'] == {'audio': [64000], 'labels': [100, 2], 'logmel': [400, 40],
                                 'egemaps': [400, 25], 'mask': [100], 'recording': [],
                                 'start': []}


# ------------------------------------------------------------------------------------------
# Bad inputs: a clear error naming the file, and nothing left that reads as a dataset.


def _replace_line(path, old, new):
  with open(path, newline='') as f:
    text = f.read()
  assert old in text
  with open(path, 'w', newline='') as f:
    f.write(text.replace(old, new, 1))


def _break_missing_folder(root):
  shutil.rmtree(os.path.join(root, 'ratings_gold_standard', 'valence'))
  return os.path.join(root, 'ratings_gold_standard', 'valence'), 'folder not found'


def _break_corrupt_wav(root):
  path = os.path.join(root, 'recordings_audio', 'dev_1.wav')
  with open(path, 'wb') as f:
    f.write(b'RIFF\x24\x00\x00\x00WAVEfmt garbage that is not a wave file')
  return path, 'not a readable audio file'


def _break_empty_wav(root):
  path = os.path.join(root, 'recordings_audio', 'train_2.wav')
  soundfile.write(path, np.zeros((0, 2)), 44100)
  return path, 'no samples'


def _break_arff_header(root):
  path = os.path.join(root, 'ratings_gold_standard', 'arousal', 'train_1.arff')
  _replace_line(path, '@attribute GoldStandard numeric', '@attribute Gold numeric')
  return path, 'lacks attribute'


def _break_arff_length(root):
  path = os.path.join(root, 'ratings_gold_standard', 'valence', 'dev_1.arff')
  with open(path, newline='') as f:
    lines = f.read().split('\r\n')
  with open(path, 'w', newline='') as f:
    f.write('\r\n'.join(lines[:9 + 100]) + '\r\n')  # header + 100 of 156 rows
  return path, 'must agree within'


def _break_arff_nan(root):
  path = os.path.join(root, 'ratings_gold_standard', 'arousal', 'train_2.arff')
  with open(path, newline='') as f:
    lines = f.read().split('\r\n')
  name, time, _ = lines[50].split(',')
  lines[50] = f'{name},{time},NaN'
  with open(path, 'w', newline='') as f:
    f.write('\r\n'.join(lines))
  return path, 'NaN'


def _break_label_times(root):
  path = os.path.join(root, 'ratings_gold_standard', 'arousal', 'train_1.arff')
  _replace_line(path, 'train_1,0.04,', 'train_1,0.08,')
  return path, '25 Hz grid'


def _break_nan_audio(root):
  # Passes every check that reads headers only: found while writing, after train_1's windows.
  path = os.path.join(root, 'recordings_audio', 'train_2.wav')
  audio = fixtures.example_audio(SECONDS, 44100, 2, seed=9).astype(np.float32)
  audio[30000, 1] = np.nan
  soundfile.write(path, audio, 44100, subtype='FLOAT')
  return path, 'NaN or infinite samples'


@pytest.mark.parametrize('break_package', [
    _break_missing_folder, _break_corrupt_wav, _break_empty_wav, _break_arff_header,
    _break_arff_length, _break_arff_nan, _break_label_times, _break_nan_audio])
def test_bad_input_is_reported_and_leaves_no_dataset(tmp_path, break_package):
  root = str(tmp_path / 'package')
  fixtures.write_recola(root, seconds=SECONDS, num_egemaps=1)
  path, problem = break_package(root)
  data_dir = str(tmp_path / 'data')
  with pytest.raises(DataError, match=problem) as error:
    prepare.prepare_dataset('recola', data_dir, manual_dir=root)
  assert path in str(error.value)
  assert not os.path.exists(os.path.join(data_dir, 'recola'))
  with pytest.raises(Exception):
    tfds.data_source('recola', data_dir=data_dir)


def test_bad_ratings_csv_header_leaves_other_configs_readable(tmp_path):
  root = str(tmp_path / 'package')
  fixtures.write_recola(root, seconds=SECONDS, num_egemaps=1)
  data_dir = str(tmp_path / 'data')
  prepare.prepare_dataset('recola', data_dir, manual_dir=root)
  path = os.path.join(root, 'ratings_individual', 'valence', 'dev_1.csv')
  _replace_line(path, 'time;FM1 ;', 'time,FM1 ,')
  with pytest.raises(DataError, match='line 1 must be a header') as error:
    prepare.prepare_dataset('recola:raters_mean', data_dir, manual_dir=root)
  assert path in str(error.value)
  assert len(tfds.data_source('recola', data_dir=data_dir)['train']) == 6
  assert not os.path.exists(os.path.join(data_dir, 'recola', 'raters_mean'))


@pytest.mark.slow
def test_command_line_failure_is_one_clear_line_and_exit_status_1(tmp_path):
  root = str(tmp_path / 'package')
  fixtures.write_recola(root, seconds=SECONDS, num_egemaps=1)
  path, _ = _break_arff_header(root)
  data_dir = str(tmp_path / 'data')
  result = subprocess.run(
      [sys.executable, '-m', 'launch.prepare', '--dataset=recola', f'--manual_dir={root}',
       f'--data_dir={data_dir}'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 1
  assert f'prepare: error: {path}: gold-standard ARFF lacks attribute' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(os.path.join(data_dir, 'recola'))
