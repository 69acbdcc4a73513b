"""What a model trained on a few speakers needs: the annotation delay (`model.label_delay`) in the
loss and in the placement of predictions, and inputs normalised per recording
(`model.recording_norm`). The tiny run of every other test uses both (launch/configs/synthetic.py
`tiny`), so `Predictor` against `predict_split`, resume after SIGKILL and the multi-device tests
cover them end to end; here each piece is checked against a hand-made reference."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from ccc_jax import features
from ccc_jax import input_pipeline
from ccc_jax import losses
from ccc_jax import windows
from ccc_jax.config import ModelConfig
from ccc_jax.errors import ConfigError, CorpusError


def test_a_perfect_delayed_output_is_placed_back_on_the_truth():
  """Windows whose output frame i is the truth at frame start + i + d, put back with delay d,
  give the truth, except the first d frames, which hold the first window's first output."""
  num_frames, window, hop, delay = 53, 10, 5, 4
  truth = np.random.default_rng(0).normal(size=(num_frames, 2))
  padded = np.concatenate([truth, np.full((window + delay, 2), np.nan)])  # past the end: unused
  average = windows.OverlapAverage(num_frames, (2,))
  for start in windows.window_starts(num_frames, window, hop):
    average.add(start, padded[start + delay:start + delay + window], delay)
  result = average.result(np.float64)
  np.testing.assert_allclose(result[delay:], truth[delay:], rtol=0, atol=1e-12)
  np.testing.assert_allclose(result[:delay], np.repeat(truth[delay:delay + 1], delay, 0))


def test_delay_aligned_scores_output_i_against_label_i_plus_delay():
  predictions = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
  labels = predictions + 100.0
  mask = jnp.ones((2, 6))
  got_p, got_l, got_m = losses.delay_aligned(predictions, labels, mask, 2)
  np.testing.assert_array_equal(got_p, predictions[:, :4])
  np.testing.assert_array_equal(got_l, labels[:, 2:])
  assert got_m.shape == (2, 4)
  # A model whose output leads its label by the delay scores a perfect CCC once aligned.
  shifted = jnp.concatenate([labels[:, 2:], jnp.zeros((2, 2, 1))], axis=1)
  total, _ = losses.loss('ccc', *losses.delay_aligned(shifted, labels, mask, 2))
  assert float(total) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match='shorter than the window'):
    losses.delay_aligned(predictions, labels, mask, 6)


def test_what_a_delay_or_recording_statistics_cannot_do_is_refused():
  with pytest.raises(ConfigError, match='label_delay'):
    ModelConfig(causal=True, label_delay=5)
  with pytest.raises(ConfigError, match='recording_norm'):
    ModelConfig(causal=True, recording_norm=('logmel',))
  with pytest.raises(ConfigError, match='recording_norm must be one of'):
    ModelConfig(recording_norm=('mocap',))
  with pytest.raises(ConfigError, match='whole number'):
    ModelConfig(label_delay=-1)
  with pytest.raises(ConfigError, match='predicted by no window'):
    windows.check_delay(51, 100, 50)
  windows.check_delay(50, 100, 50)
  # A variant that drops a modality leaves its recording normalisation without effect.
  assert ModelConfig(modalities=('audio',), recording_norm=('audio', 'logmel')
                     ).recording_norm_inputs == ('audio',)


def test_recording_norm_standardises_each_recording_by_its_own_statistics(tiny_data_dir):
  """Every dev recording's log-mel rows, as evaluation reads them, have mean 0 and std 1 per
  band over the recording (the builders' statistics are of the same rows); with the training
  split's statistics they do not."""
  corpus = input_pipeline.open_corpus('synthetic_avd:tiny', str(tiny_data_dir))
  frames = corpus.recordings('dev')
  for norm in (('logmel',), ()):
    rows: dict[str, windows.OverlapAverage] = {}
    for inputs, info in input_pipeline.iterate_split(corpus, 'dev', 8, ('logmel',),
                                                     recording_norm=norm):
      for i in np.flatnonzero(info['valid']):
        name = info['recording'][i]
        average = rows.setdefault(name, windows.OverlapAverage(
            frames[name] * features.LOGMEL_PER_FRAME, (features.NUM_MELS,)))
        average.add(info['start'][i] * features.LOGMEL_PER_FRAME, inputs['logmel'][i])
    for average in rows.values():
      whole = average.result(np.float64)
      if norm:
        np.testing.assert_allclose(whole.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(whole.std(0), 1.0, atol=1e-4)
      else:
        assert np.abs(whole.mean(0)).max() > 0.05


def test_a_corpus_without_recording_statistics_names_the_command_that_prepares_it(tiny_data_dir):
  corpus = input_pipeline.open_corpus('synthetic_avd:tiny', str(tiny_data_dir))
  metadata = {k: v for k, v in corpus.metadata.items() if k != 'recording_stats'}
  old = dataclasses.replace(corpus, metadata=metadata)
  with pytest.raises(CorpusError, match='version 1.3.0.*python -m launch.prepare '
                                        '--dataset=synthetic_avd:tiny'):
    old.recording_stats('train')
