"""The synthetic_avd builder: its tiny config prepared and read back, and its design claims."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ccc_jax import audio_io
from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax import input_pipeline
from ccc_jax.errors import CorpusError
from datasets.synthetic_avd import linear_probe
from datasets.synthetic_avd import simulation

SEED = 0  # the tiny config's seed
NUM_FRAMES = 500  # 20 s sessions


@pytest.fixture(scope='module')
def tiny(tiny_data_dir):
  """The session's synthetic_avd:tiny (conftest.py prepares it once per test run)."""
  return 'synthetic_avd/tiny', str(tiny_data_dir)


def test_metadata_and_speaker_independent_splits(tiny):
  name, data_dir = tiny
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata
  assert metadata['tasks'] == ['activation', 'valence', 'dominance']
  assert metadata['modalities'] == ['audio', 'logmel', 'egemaps', 'mocap']
  assert metadata['labelled_splits'] == ['train', 'dev', 'test']
  speakers = metadata['speakers']
  assert [len(speakers[split]) for split in ('train', 'dev', 'test')] == [4, 1, 1]
  assert len(set(sum(speakers.values(), []))) == 6  # no speaker in two splits
  for split, recordings in metadata['recordings'].items():
    assert {recording.split('_')[0] for recording in recordings} == set(speakers[split])
    assert set(recordings.values()) == {NUM_FRAMES}
  assert len(metadata['stats']['mocap']['mean']) == features.mocap_feature_dim(17)
  # eGeMAPS statistics are per LLD, over the training split: loudness varies, F0 is 0 when
  # unvoiced and semitones above 27.5 Hz when voiced.
  stats = metadata['stats']['egemaps']
  assert len(stats['mean']) == len(stats['std']) == egemaps.NUM_EGEMAPS
  f0 = egemaps.EGEMAPS_NAMES.index('F0semitoneFrom27.5Hz_sma3nz')
  assert 5 < stats['mean'][f0] < 40 and stats['std'][f0] > 1
  sources = tfds.data_source(name, data_dir=data_dir)
  assert {split: len(source) for split, source in sources.items()} == {
      'train': 36, 'dev': 9, 'test': 9}


def test_a_window_matches_the_simulation(tiny):
  name, data_dir = tiny
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata
  source = tfds.data_source(name, data_dir=data_dir)['dev']
  recording = next(iter(metadata['recordings']['dev']))
  speaker = int(recording[3:5])
  window = next(source[i] for i in range(len(source))
                if source[i]['recording'].decode() == recording and source[i]['start'] == 150)

  latent = simulation.latents(SEED, speaker, 0, NUM_FRAMES)
  gold = simulation.ratings(SEED, speaker, 0, latent, simulation.rater_panel(SEED, 6)).mean(0)
  profile = simulation.speaker_profile(SEED, speaker)
  audio = simulation.synthesize_audio(SEED, speaker, 0, latent, profile)
  positions = simulation.synthesize_mocap(SEED, speaker, 0, latent, profile, 60.0)
  assert np.isnan(positions).any()  # occlusions are simulated...
  mocap = features.mocap_features(positions, 60.0, NUM_FRAMES)  # ...and filled at prep time

  np.testing.assert_allclose(window['labels'], gold[150:250], atol=1e-6)
  # Stored as 16-bit PCM: the float waveform rounded to the nearest step of 1 / 32768.
  assert window['audio'].dtype == np.int16 and np.abs(audio).max() < 1.0  # nothing clipped
  decoded = audio_io.from_pcm16(window['audio'])
  assert decoded.dtype == np.float32
  np.testing.assert_array_equal(decoded, np.round(audio[150 * 640:250 * 640] * 32768) / 32768)
  assert np.abs(decoded - audio[150 * 640:250 * 640]).max() <= 0.5 / 32768
  np.testing.assert_allclose(window['mocap'], mocap[150:250], atol=1e-4)
  np.testing.assert_allclose(window['logmel'], features.log_mel(audio)[600:1000], atol=1e-4)
  # Computed once over the whole recording (the audio as the builder fits it), then sliced.
  lld = egemaps.egemaps_lld(audio[:NUM_FRAMES * 640], NUM_FRAMES)
  np.testing.assert_array_equal(window['egemaps'], lld[600:1000])
  np.testing.assert_array_equal(window['mask'], 1.0)


def test_16_bit_audio_round_trips_and_decodes_alike_on_numpy_and_jax(tmp_path):
  """A 16-bit WAV at 16 kHz is stored unchanged; the decode is exact on numpy and in jit."""
  import jax
  import soundfile
  pcm = np.array([-32768, -12345, -1, 0, 1, 2, 32767], np.int16)
  soundfile.write(str(tmp_path / 'pcm.wav'), pcm, 16000, subtype='PCM_16')
  waveform = audio_io.load_audio(str(tmp_path / 'pcm.wav'))  # as the builders read it
  stored, clipped = audio_io.to_pcm16(waveform)
  np.testing.assert_array_equal(stored, pcm)
  assert stored.dtype == np.int16 and clipped == 0
  expected = (pcm / 32768.0).astype(np.float32)  # soundfile's scale
  np.testing.assert_array_equal(audio_io.from_pcm16(stored), expected)
  np.testing.assert_array_equal(np.asarray(jax.jit(audio_io.from_pcm16)(stored)), expected)
  # Off the grid: nearest step; past full scale: clipped and counted.
  off_grid = np.array([0.3 / 32768, 0.7 / 32768, 1.0, -1.5], np.float32)
  stored, clipped = audio_io.to_pcm16(off_grid)
  np.testing.assert_array_equal(stored, [0, 1, 32767, -32768])
  assert clipped == 2
  # What inference feeds the raw-audio branch: the same grid.
  np.testing.assert_array_equal(audio_io.as_stored(off_grid),
                                np.array([0, 1, 32767, -32768], np.float32) / 32768)


def test_windows_are_stored_in_the_order_of_tfds_own_writer(tiny, tmp_path):
  """Each split's windows come in the order TFDS's single-process writer gives them (its
  `Shuffler`: sorted by the hash of the key, salted with the split name), as before the
  recordings were written by worker processes; training's shuffle starts from this order."""
  from tensorflow_datasets.core import shuffle
  name, data_dir = tiny
  for split, source in tfds.data_source(name, data_dir=data_dir).items():
    keys = [f"{source[i]['recording'].decode()}@{source[i]['start']}" for i in range(len(source))]
    shuffler = shuffle.Shuffler(str(tmp_path), hash_salt=split)
    for key in sorted(keys):
      shuffler.add(key, key.encode())
    assert keys == [data.decode() for _, data in shuffler]


def test_a_corpus_of_an_older_version_says_prepare_again(tiny_data_dir, tmp_path):
  """Before 1.3.0 audio was stored as float32: such a folder is refused with the command."""
  import shutil
  old = tmp_path / 'synthetic_avd' / 'tiny' / '1.2.0'
  shutil.copytree(tiny_data_dir / 'synthetic_avd' / 'tiny' / '1.3.0', old)
  info = json.loads((old / 'dataset_info.json').read_text())
  (old / 'dataset_info.json').write_text(json.dumps(dict(info, version='1.2.0')))
  with pytest.raises(CorpusError, match=r'1\.2\.0: prepared by an older version of ccc-jax .*'
                                        r'prepare it again: python -m launch.prepare '
                                        r'--dataset=synthetic_avd:tiny --data_dir='):
    input_pipeline.open_corpus('synthetic_avd:tiny', str(tmp_path))


def test_a_corpus_without_a_modality_says_prepare_again(tiny_data_dir):
  """A corpus prepared before eGeMAPS existed (version 1.0.0) has no `egemaps`."""
  corpus = input_pipeline.open_corpus('synthetic_avd:tiny', str(tiny_data_dir))
  corpus.model_info(corpus.tasks, ('audio', 'egemaps'))
  old = dict(corpus.metadata, modalities=['audio', 'logmel', 'mocap'])
  old_corpus = input_pipeline.Corpus(corpus.name, corpus.data_dir, old, corpus.sources,
                                     corpus.spec)
  with pytest.raises(CorpusError, match=r"no 'egemaps' input \(it has audio, logmel, mocap\).*"
                                        r'prepare it again: python -m launch.prepare '
                                        r'--dataset=synthetic_avd:tiny --data_dir='):
    old_corpus.model_info(corpus.tasks, ('audio', 'egemaps'))


@pytest.mark.slow
def test_metadata_round_trips_in_a_process_without_our_builders(tiny):
  name, data_dir = tiny
  code = ('import json, sys, tensorflow_datasets as tfds\n'
          f'metadata = tfds.builder({name!r}, data_dir={data_dir!r}).info.metadata\n'
          'assert not any(m.startswith("datasets") for m in sys.modules)\n'
          'print(json.dumps(dict(metadata)))\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=data_dir, capture_output=True,
                          text=True, check=True)
  read_back = json.loads(result.stdout.strip().splitlines()[-1])
  expected = dict(tfds.builder(name, data_dir=data_dir).info.metadata)
  assert read_back == json.loads(json.dumps(expected))


def test_oracle_shows_rater_delay_matters(tiny):
  name, data_dir = tiny
  oracle = tfds.builder(name, data_dir=data_dir).info.metadata['oracle_ccc']
  for task in simulation.TASKS:
    assert 1.0 <= oracle['train']['best_shift_s'][task] <= 3.0
    assert oracle['train']['latent_shifted'][task] > oracle['train']['latent'][task]
    assert 0.8 < oracle['train']['noiseless_raters'][task] < 1.0


def test_generation_is_deterministic_by_seed():
  first = simulation.latents(3, 1, 0, 200)
  np.testing.assert_array_equal(first, simulation.latents(3, 1, 0, 200))
  assert not np.allclose(first, simulation.latents(4, 1, 0, 200))
  profile = simulation.speaker_profile(3, 1)
  np.testing.assert_array_equal(simulation.synthesize_audio(3, 1, 0, first, profile),
                                simulation.synthesize_audio(3, 1, 0, first, profile))


def _constant_latent(activation=0.0, valence=0.0, dominance=0.0, num_frames=750):
  return np.tile([activation, valence, dominance], (num_frames, 1))


def _spectrum_shift(low, high, speaker=2):
  """Change in the long-term log-mel spectrum (RMS over bands) between two latent settings."""
  profile = simulation.speaker_profile(SEED, speaker)
  means = [features.log_mel(simulation.synthesize_audio(SEED, speaker, 0, latent, profile))
           .mean(axis=0) for latent in (low, high)]
  return float(np.sqrt(np.mean((means[1] - means[0]) ** 2)))


def test_activation_is_clearly_audible_valence_much_less():
  activation = _spectrum_shift(_constant_latent(activation=-0.6), _constant_latent(activation=0.6))
  valence = _spectrum_shift(_constant_latent(valence=-0.6), _constant_latent(valence=0.6))
  dominance = _spectrum_shift(_constant_latent(dominance=-0.6), _constant_latent(dominance=0.6))
  assert activation > 3 * valence
  assert dominance > valence


def _body(latent, speaker=2):
  profile = simulation.speaker_profile(SEED, speaker)
  positions = simulation.synthesize_mocap(SEED, speaker, 0, latent, profile, 60.0)
  return features.mocap_features(positions, 60.0, latent.shape[0])


def test_mocap_shows_activation_as_energy_and_valence_and_dominance_as_posture():
  markers = simulation.MARKERS
  num = len(markers)
  velocity = slice(3 * num, 6 * num)
  calm, aroused = _body(_constant_latent(activation=-0.6)), _body(_constant_latent(activation=0.6))
  assert np.abs(aroused[:, velocity]).mean() > 2 * np.abs(calm[:, velocity]).mean()
  head_height = 3 * markers.index('HEAD_FRONT') + 2  # vertical, relative to the body centre
  sad, happy = _body(_constant_latent(valence=-0.6)), _body(_constant_latent(valence=0.6))
  assert happy[:, head_height].mean() > sad[:, head_height].mean() + 5  # mm: head raised
  wrists = [3 * markers.index(side) + axis for side in ('L_WRIST', 'R_WRIST') for axis in (0, 1)]
  meek, bold = _body(_constant_latent(dominance=-0.6)), _body(_constant_latent(dominance=0.6))
  spread = lambda body: np.hypot(body[:, wrists[0]] - body[:, wrists[2]],
                                 body[:, wrists[1]] - body[:, wrists[3]]).mean()
  assert spread(bold) > spread(meek) + 50  # mm: arms held out


def test_linear_probe_scores_every_task_and_modality(tiny):
  name, data_dir = tiny
  scores = linear_probe.probe(name, data_dir, 'test')
  assert list(scores) == ['audio', 'mocap', 'audio+mocap']
  for per_task in scores.values():
    assert list(per_task) == list(simulation.TASKS)
    assert all(-1.0 <= score <= 1.0 for score in per_task.values())
