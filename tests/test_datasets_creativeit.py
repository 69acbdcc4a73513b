"""The creativeit builder, prepared from the normalised layout and read back."""

import os
import shutil

import librosa
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ccc_jax import audio_io
from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax.errors import DataError
from datasets import prepare
from tests import fixtures

SECONDS = 6.0  # 150 label frames
NUM_FRAMES = 150
ACTORS = {('session1', 'perf1'): ('actor1', 'actor2'), ('session1', 'perf2'): ('actor1', 'actor3'),
          ('session2', 'perf1'): ('actor4', 'actor5')}


@pytest.fixture(scope='module')
def creativeit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('creativeit_layout'))
  layout = fixtures.write_creativeit(root, ACTORS, seconds=SECONDS)
  data_dir = str(tmp_path_factory.mktemp('creativeit_data'))
  prepare.prepare_dataset('creativeit', data_dir, manual_dir=root)
  return layout, data_dir


def test_metadata_and_actor_split(creativeit):
  _, data_dir = creativeit
  metadata = tfds.builder('creativeit', data_dir=data_dir).info.metadata
  assert metadata['tasks'] == ['activation', 'valence', 'dominance']
  assert metadata['modalities'] == ['audio', 'logmel', 'egemaps', 'mocap']
  assert len(metadata['stats']['egemaps']['std']) == egemaps.NUM_EGEMAPS
  assert metadata['labelled_splits'] == ['train', 'dev', 'test']
  assert metadata['mocap_markers'] == list(fixtures.MOCAP_MARKERS)
  actors = metadata['actors']
  assert sorted(sum(actors.values(), [])) == ['actor1', 'actor2', 'actor3', 'actor4', 'actor5']
  assert len(actors['dev']) == len(actors['test']) == 1
  for split, recordings in metadata['recordings'].items():
    assert {recording.split('/')[-1] for recording in recordings} <= set(actors[split])
    assert set(recordings.values()) == {NUM_FRAMES}
  # actor1 performs twice: both recordings are in actor1's split.
  actor1_split = next(split for split, names in actors.items() if 'actor1' in names)
  assert {'session1/perf1/actor1', 'session1/perf2/actor1'} <= set(
      metadata['recordings'][actor1_split])
  dim = features.mocap_feature_dim(len(fixtures.MOCAP_MARKERS))
  assert len(metadata['stats']['mocap']['mean']) == dim


def test_a_window_matches_the_source_files(creativeit):
  layout, data_dir = creativeit
  metadata = tfds.builder('creativeit', data_dir=data_dir).info.metadata
  split = next(split for split, names in metadata['actors'].items() if 'actor1' in names)
  recording = 'session1/perf2/actor1'
  source = tfds.data_source('creativeit', data_dir=data_dir)[split]
  window = next(source[i] for i in range(len(source))
                if source[i]['recording'].decode() == recording and source[i]['start'] == 50)

  frame_times = np.arange(NUM_FRAMES) / 25
  for task_index, task in enumerate(fixtures.CREATIVEIT_TASKS):
    traces = layout.annotations[recording][task]
    gold = np.mean([np.interp(frame_times, t, v) for t, v in traces], axis=0)
    np.testing.assert_allclose(window['labels'][:, task_index], gold[50:150], atol=1e-6)
  audio = librosa.resample(layout.audio[recording][:, 0], orig_sr=48000, target_sr=16000,
                           res_type='soxr_hq')
  np.testing.assert_allclose(audio_io.from_pcm16(window['audio']),
                             audio[50 * 640:150 * 640], atol=0.5 / 32768 + 1e-6)  # 16-bit PCM
  mocap = features.mocap_features(layout.mocap[recording], layout.mocap_rate, NUM_FRAMES)
  assert window['mocap'].shape == (100, features.mocap_feature_dim(len(fixtures.MOCAP_MARKERS)))
  np.testing.assert_allclose(window['mocap'], mocap[50:150], rtol=1e-5, atol=1e-3)
  assert np.all(np.isfinite(window['mocap']))  # the occluded wrist was filled
  # eGeMAPS of the whole resampled float recording (before its 16-bit storage), sliced.
  waveform = audio_io.load_audio(os.path.join(layout.root, recording, 'audio.wav'))
  np.testing.assert_array_equal(
      window['egemaps'], egemaps.egemaps_lld(waveform[:NUM_FRAMES * 640], NUM_FRAMES)[200:600])


def test_explicit_actor_split(tmp_path):
  root = str(tmp_path / 'layout')
  fixtures.write_creativeit(root, ACTORS, seconds=2.0)
  data_dir = str(tmp_path / 'data')
  summary = prepare.prepare_dataset('creativeit:dev_actors=actor2,test_actors=actor4+actor5',
                                    data_dir, manual_dir=root)
  assert summary.name == 'creativeit/default_dev-actors-actor2_test-actors-actor4-actor5'
  metadata = tfds.builder(summary.name, data_dir=data_dir).info.metadata
  assert metadata['actors'] == {'train': ['actor1', 'actor3'], 'dev': ['actor2'],
                                'test': ['actor4', 'actor5']}
  assert sorted(metadata['recordings']['test']) == ['session2/perf1/actor4',
                                                    'session2/perf1/actor5']


def _first_recording(root):
  return os.path.join(root, 'session1', 'perf1', 'actor1')


def _break_mocap_header(root):
  path = os.path.join(_first_recording(root), 'mocap.csv')
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text.replace('LFHD_y', 'LFHD_q', 1))
  return path, 'mocap header'


def _break_marker_set(root):
  path = os.path.join(root, 'session2', 'perf1', 'actor4', 'mocap.csv')
  positions = np.zeros((int(SECONDS * 60), 2, 3))
  fixtures.write_mocap_csv(path, positions, 60.0, markers=('LFHD', 'RFHD'))
  return path, 'markers differ'


def _break_annotation_range(root):
  path = os.path.join(_first_recording(root), 'annotations', 'valence', 'annotator2.csv')
  fixtures.write_annotation_csv(path, np.array([0.0, 1.0, 2.0]), np.array([0.0, 50.0, 20.0]))
  return path, r'\[-1, 1\]'


def _break_annotation_header(root):
  path = os.path.join(_first_recording(root), 'annotations', 'dominance', 'annotator1.csv')
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text.replace('time,value', 'seconds,rating', 1))
  return path, 'header'


def _break_annotation_nan(root):
  path = os.path.join(_first_recording(root), 'annotations', 'activation', 'annotator3.csv')
  with open(path, 'a') as f:
    f.write('5.900,NaN\n')
  return path, r'line \d+: missing value in column "value"'


def _break_annotation_length(root):
  path = os.path.join(_first_recording(root), 'annotations', 'activation', 'annotator1.csv')
  fixtures.write_annotation_csv(path, np.array([0.0, 30.0]), np.array([0.1, 0.2]))
  return path, 'runs to 30.00 s'


def _break_mocap_length(root):
  path = os.path.join(_first_recording(root), 'mocap.csv')
  fixtures.write_mocap_csv(path, np.ones((60 * 20, len(fixtures.MOCAP_MARKERS), 3)), 60.0)
  return path, 'must agree within'


def _break_missing_annotations(root):
  path = os.path.join(_first_recording(root), 'annotations', 'dominance')
  shutil.rmtree(path)
  return path, 'folder not found'


def _break_missing_audio(root):
  path = os.path.join(root, 'session2', 'perf1', 'actor5', 'audio.wav')
  os.remove(path)
  return path, 'not found'


@pytest.mark.parametrize('break_layout', [
    _break_mocap_header, _break_marker_set, _break_annotation_range, _break_annotation_header,
    _break_annotation_nan, _break_annotation_length, _break_mocap_length,
    _break_missing_annotations, _break_missing_audio])
def test_bad_input_is_reported_and_leaves_no_dataset(tmp_path, break_layout):
  root = str(tmp_path / 'layout')
  fixtures.write_creativeit(root, ACTORS, seconds=SECONDS)
  path, problem = break_layout(root)
  data_dir = str(tmp_path / 'data')
  with pytest.raises(DataError, match=problem) as error:
    prepare.prepare_dataset('creativeit', data_dir, manual_dir=root)
  assert path in str(error.value)
  assert not os.path.exists(os.path.join(data_dir, 'creativeit'))


def test_missing_manual_dir_and_unknown_actor(tmp_path):
  with pytest.raises(DataError, match='does not exist or is empty'):
    prepare.prepare_dataset('creativeit', str(tmp_path / 'data'),
                            manual_dir=str(tmp_path / 'nowhere'))
  root = str(tmp_path / 'layout')
  fixtures.write_creativeit(root, ACTORS, seconds=2.0)
  with pytest.raises(DataError, match="actors \\['actor9'\\] not found"):
    prepare.prepare_dataset('creativeit:test_actors=actor9', str(tmp_path / 'data'),
                            manual_dir=root)
  assert not os.path.exists(tmp_path / 'data' / 'creativeit')
