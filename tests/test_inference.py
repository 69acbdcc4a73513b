"""Tests of ccc_jax.inference's prediction path: restoring a checkpoint for inference, the
streamed, chunked feature computation, `Predictor` against `evaluation.predict_split`, audio
of any rate and channel count, trace CSV files, and bad inputs.

One tiny trained model (the session's `tiny_workdir`) serves every test; nothing here writes
into its workdir.
"""

import dataclasses

import jax
import numpy as np
import pytest
import soundfile

from ccc_jax import audio_io
from ccc_jax import checkpoints
from ccc_jax import egemaps
from ccc_jax import evaluation
from ccc_jax import features
from ccc_jax import formats
from ccc_jax import inference
from ccc_jax import input_pipeline
from ccc_jax import postprocess
from ccc_jax import train
from ccc_jax.errors import CheckpointError, DataError
from conftest import tiny_config
from datasets.synthetic_avd import simulation

MOCAP_RATE = 60.0


@pytest.fixture(scope='module')
def predictor(tiny_workdir):
  return inference.Predictor.load(tiny_workdir, use_postprocessing=False)


def _session(recording_id: str, num_frames: int, seed: int = 0):
  """The raw 16 kHz audio and 60 Hz marker positions the tiny builder made a recording from."""
  speaker, session = int(recording_id[3:5]), int(recording_id.split('_s')[1])
  key = (seed, speaker, session)
  profile = simulation.speaker_profile(seed, speaker)
  latent = simulation.latents(*key, num_frames)
  audio = simulation.synthesize_audio(*key, latent, profile)
  positions = simulation.synthesize_mocap(*key, latent, profile, MOCAP_RATE)
  # The builder fits the audio to the label frames (trimmed or zero-padded).
  audio = np.pad(audio[:num_frames * 640], (0, max(num_frames * 640 - audio.shape[0], 0)))
  return audio.astype(np.float32), positions


def _write_mocap_csv(path, positions, rate=MOCAP_RATE):
  header = ['time'] + [f'{m}_{axis}' for m in simulation.MARKERS for axis in 'xyz']
  times = np.arange(positions.shape[0]) / rate
  table = np.column_stack([times, positions.reshape(positions.shape[0], -1)])
  np.savetxt(path, table, delimiter=',', header=','.join(header), comments='', fmt='%.6f')


def test_restores_stacked_seeds_and_the_run_info(predictor, tiny_workdir):
  model = predictor.model
  assert model.step in (10, 20) and model.num_seeds == 1  # best of the evaluations at 10, 20
  assert predictor.tasks == ('activation', 'valence', 'dominance')
  assert predictor.needs_mocap and predictor.label_rate == 25
  leaves = jax.tree.leaves(model.params)
  assert all(leaf.shape[0] == 1 for leaf in leaves)
  assert len({d for leaf in leaves for d in leaf.devices()}) == 1  # trained on 8, restored on 1
  assert checkpoints.restore_model(tiny_workdir, 'latest').step == 20
  assert checkpoints.restore_model(tiny_workdir, 20).step == 20
  assert checkpoints.restore_model(tiny_workdir).step == model.step


def test_chunked_log_mel_equals_whole_recording_log_mel():
  rng = np.random.default_rng(0)
  waveform = rng.normal(size=37 * 640 + 123).astype(np.float32)
  whole = features.log_mel(waveform)
  num_frames = features.num_label_frames(waveform.shape[0])
  for begin, end in [(0, 5), (1, 7), (3, 38), (20, 38), (0, 38), (37, 38)]:
    np.testing.assert_allclose(features.log_mel_span(waveform, begin, end),
                               whole[4 * begin: 4 * end], rtol=1e-6, atol=1e-5)
    # Causal: the waveform received up to the end of label frame `end - 1` is all it needs.
    np.testing.assert_allclose(features.log_mel_span(waveform[:end * 640], begin, end),
                               whole[4 * begin: 4 * end], rtol=1e-6, atol=1e-5)
  assert num_frames == 38


def test_prediction_of_raw_recording_equals_the_prepared_split(predictor, tiny_data_dir):
  """Predictor on the raw signals == predict_split on the prepared windows of the same recording.

  A batch of 4 windows makes the features of each batch come from a separate log-mel chunk.
  """
  model = predictor.model
  corpus = input_pipeline.open_corpus(model.config.dataset, str(tiny_data_dir))
  expected = evaluation.predict_split(model.graphdef, model.params, corpus, 'dev',
                                      model.config.model, model.tasks,
                                      batch_size=model.config.eval_batch)
  (recording, entry), = expected.items()
  audio, positions = _session(recording, corpus.recordings('dev')[recording])
  small_batches = inference.Predictor(model, batch_size=4)
  got = small_batches.predict_seeds(audio, 16000, positions, MOCAP_RATE)
  assert got.shape == entry['prediction'].shape == (1, 500, 3)
  # The split stores the audio as 16-bit PCM and the Predictor puts the signal it reads on the
  # same grid (`audio_io.as_stored`); without that, the tiny model's outputs moved by 5e-3.
  np.testing.assert_allclose(got, entry['prediction'], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(predictor.predict(audio, 16000, positions, MOCAP_RATE),
                                evaluation.ensemble(predictor.predict_seeds(
                                    audio, 16000, positions, MOCAP_RATE)))


def _untrained(data_dir, modalities):
  """A model of the tiny config reading `modalities`, with its initial parameters: the inputs'
  path is what the tests compare, and training would only cost compile time."""
  config = tiny_config(data_dir)
  config = config.replace(model=dataclasses.replace(config.model, modalities=modalities))
  corpus = input_pipeline.open_corpus(config.dataset, str(data_dir))
  info = corpus.model_info(config.tasks, modalities)
  graphdef, params = train.init_params(config.model, info, config.seeds)
  return checkpoints.RestoredModel('untrained', 0, graphdef, params, info, config), corpus


def test_egemaps_prediction_of_raw_recording_equals_the_prepared_split(tiny_data_dir):
  """eGeMAPS computed per batch span by the Predictor (`egemaps_span`) == the builder's
  whole-recording eGeMAPS, through the model. Exact up to float32 rounding: the synthetic
  speech has no voiced stretch longer than `egemaps_span`'s 10 s look-back, the one case where
  its jitter and shimmer could differ (ccc_jax/egemaps.py)."""
  model, corpus = _untrained(tiny_data_dir, ('egemaps',))
  expected = evaluation.predict_split(model.graphdef, model.params, corpus, 'dev',
                                      model.config.model, model.tasks, batch_size=4)
  (recording, entry), = expected.items()
  audio, _ = _session(recording, corpus.recordings('dev')[recording])
  got = inference.Predictor(model, batch_size=4).predict_seeds(audio, 16000)
  assert got.shape == entry['prediction'].shape == (1, 500, 3)
  assert np.std(got[0, :, 0]) > 1e-3  # the traces follow the input, so a feature error shows
  # The split stores the audio as 16-bit PCM and the Predictor puts the signal it reads on the
  # same grid (`audio_io.as_stored`); without that, the tiny model's outputs moved by 5e-3.
  np.testing.assert_allclose(got, entry['prediction'], rtol=1e-5, atol=1e-5)


def test_egemaps_of_a_batch_are_those_of_the_whole_recording(tiny_data_dir):
  """The Predictor's normalised eGeMAPS rows of one batch span (frames 200-500 of 500) equal the
  prepared windows' rows."""
  model, corpus = _untrained(tiny_data_dir, ('egemaps',))
  recording = next(iter(corpus.recordings('dev')))
  audio, _ = _session(recording, 500)
  starts = np.array([200, 250, 300, 350, 400])
  batch = inference.Predictor(model, batch_size=5)._window_batch(audio, None, starts, 500,
                                                                 model.info.stats)
  lld = egemaps.egemaps_lld(audio, 500)
  prepared = np.stack([np.pad(lld[4 * s: 4 * s + 400], [(0, 400 - len(lld[4 * s: 4 * s + 400])),
                                                          (0, 0)]) for s in starts])
  np.testing.assert_allclose(
      batch['egemaps'], input_pipeline.normalise({'egemaps': prepared}, corpus.stats,
                                                 ['egemaps'])['egemaps'], rtol=1e-6, atol=1e-6)


def test_the_avec_functionals_cannot_predict_new_recordings(tiny_workdir):
  model = checkpoints.restore_model(tiny_workdir)
  config = model.config.replace(model=dataclasses.replace(
      model.config.model, modalities=('audio', 'egemaps_functionals')))
  with pytest.raises(CheckpointError, match='egemaps_functionals.*new recording cannot be '
                                            'predicted'):
    inference.Predictor(dataclasses.replace(model, config=config))


def test_log_mel_is_computed_in_bounded_chunks(predictor, monkeypatch):
  """A long recording never has its log-mel computed over more than one batch's span."""
  seen = []
  original = features.log_mel
  monkeypatch.setattr(features, 'log_mel',
                      lambda audio, num_frames=None: seen.append(len(audio)) or original(
                          audio, num_frames))
  info = predictor.model.info
  num_frames = 3000  # 2 minutes
  rng = np.random.default_rng(1)
  audio = rng.normal(scale=0.1, size=num_frames * 640).astype(np.float32)
  positions = rng.normal(size=(int(120 * MOCAP_RATE), len(simulation.MARKERS), 3))
  prediction = predictor.predict(audio, 16000, positions, MOCAP_RATE)
  assert prediction.shape == (num_frames, 3) and np.all(np.isfinite(prediction))
  span = (predictor.batch_size - 1) * info.hop + info.window
  assert len(seen) > 1 and max(seen) <= (span + 2) * 640


def test_stereo_44k_file_and_array_give_the_same_prediction(predictor, tmp_path):
  seconds, rate = 3.0, 44100
  rng = np.random.default_rng(2)
  t = np.arange(int(seconds * rate)) / rate
  left = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
  stereo = np.stack([left, 0.1 * rng.normal(size=t.shape)], axis=1)
  pcm = np.round(stereo * 32767).astype(np.int16)
  wav = tmp_path / 'stereo.wav'
  soundfile.write(wav, pcm, rate, subtype='PCM_16')
  _, positions = _session('spk05_s0', 75)
  mocap = tmp_path / 'mocap.csv'
  _write_mocap_csv(mocap, positions)

  from_file = predictor.predict_file(str(wav), str(mocap))
  assert from_file.shape == (75, 3)  # 3 s at 40 ms per frame
  take = formats.read_mocap_csv(mocap)
  from_array = predictor.predict(pcm, rate, take.positions, take.rate)
  np.testing.assert_allclose(from_array, from_file, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(audio_io.waveform_16k(pcm, rate),
                                audio_io.load_audio(wav))


def test_postprocessing_is_applied_to_the_ensemble(predictor):
  audio, positions = _session('spk05_s0', 100)
  raw = predictor.predict(audio, 16000, positions, MOCAP_RATE)
  steps = postprocess.TaskPostProcessing(delay_frames=10, bias=0.5)
  processed = inference.Predictor(
      predictor.model, postprocess.PostProcessing({t: steps for t in predictor.tasks}),
      batch_size=predictor.batch_size).predict(audio, 16000, positions, MOCAP_RATE)
  np.testing.assert_allclose(processed[10:], raw[:-10] + 0.5, rtol=1e-6, atol=1e-6)


def test_traces_csv_round_trip(tmp_path):
  traces = np.array([[0.1, -0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)
  path = tmp_path / 'out.csv'
  formats.write_traces_csv(str(path), traces, ('arousal', 'valence'))
  assert path.read_text().splitlines()[:2] == ['time,arousal,valence', '0.00,0.100000,-0.200000']
  times, columns = formats.read_traces_csv(str(path))
  np.testing.assert_allclose(times, [0, 0.04, 0.08])
  np.testing.assert_allclose(columns['valence'], traces[:, 1], atol=1e-6)
  gappy = tmp_path / 'gappy.csv'
  gappy.write_text('time,arousal\n0.0,1\n0.04,\n0.08,3\n')
  times, columns = formats.read_traces_csv(str(gappy))
  np.testing.assert_array_equal(np.isnan(columns['arousal']), [False, True, False])
  np.testing.assert_allclose(formats.labels_on_frames(times, columns['arousal'], 4),
                             [1, 2, 3, np.nan])


@pytest.mark.parametrize('text, message', [
    ('value\n1\n', 'line 1 must be a header "time,..."'),
    ('time,arousal\n', 'no rows'),
    ('time,arousal\n0,abc\n', 'line 2: "abc" in column "arousal" is not a number'),
    ('time,arousal\n0.04,1\n0.0,2\n', 'line 3: time 0.0 does not increase'),
    ('\ufefftime,arousal\n0,1\n0.04,\u00e9\n', 'line 3'),
])
def test_bad_traces_csv_names_the_file(tmp_path, text, message):
  path = tmp_path / 'labels.csv'
  path.write_text(text)
  with pytest.raises(DataError, match=message) as error:
    formats.read_traces_csv(str(path))
  assert str(path) in str(error.value)


def test_bad_audio_and_mocap_inputs(predictor, tmp_path):
  _, positions = _session('spk05_s0', 25)
  mocap = tmp_path / 'mocap.csv'
  _write_mocap_csv(mocap, positions)
  empty = tmp_path / 'empty.wav'
  soundfile.write(empty, np.zeros((0,), np.float32), 16000)
  corrupt = tmp_path / 'corrupt.wav'
  corrupt.write_bytes(b'RIFF\x00\x01garbage' * 10)
  for path, message in [(tmp_path / 'missing.wav', 'not found'), (empty, 'no samples'),
                        (corrupt, 'not a readable audio file')]:
    with pytest.raises(DataError, match=message) as error:
      predictor.predict_file(str(path), str(mocap))
    assert str(path) in str(error.value)
  audio = np.zeros(16000, np.float32)
  with pytest.raises(ValueError, match='this model uses mocap'):
    predictor.predict(audio, 16000)
  with pytest.raises(ValueError, match='--mocap'):
    predictor.predict_file(str(corrupt))
  with pytest.raises(DataError, match='2 markers'):
    predictor.predict(audio, 16000, positions[:, :2], MOCAP_RATE)
  with pytest.raises(DataError, match='the mocap lasts 1.00 s but the audio 3.00 s'):
    predictor.predict(np.zeros(48000, np.float32), 16000, positions, MOCAP_RATE)
  with pytest.raises(DataError, match='no samples'):
    predictor.predict(np.zeros(0, np.float32), 16000, positions, MOCAP_RATE)
  with pytest.raises(DataError, match=r'\[channels, samples\]'):
    predictor.predict(np.zeros((2, 16000), np.float32), 16000, positions, MOCAP_RATE)
  with pytest.raises(DataError, match='NaN'):
    predictor.predict(np.full(100, np.nan, np.float32), 16000, positions, MOCAP_RATE)


def test_unknown_checkpoints(tiny_workdir, tmp_path):
  with pytest.raises(CheckpointError, match='has no step 7'):
    inference.Predictor.load(tiny_workdir, '7')
  with pytest.raises(CheckpointError, match="'best', 'latest' or a step number"):
    inference.Predictor.load(tiny_workdir, 'newest')
  with pytest.raises(CheckpointError, match='train first'):
    inference.Predictor.load(tmp_path / 'no_run')
