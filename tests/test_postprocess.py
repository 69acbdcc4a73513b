"""Tests of ccc_jax.postprocess: shift, smoothing, dev tuning, JSON and input checks."""

import json

import numpy as np
import pytest
from scipy import ndimage

from ccc_jax import postprocess
from ccc_jax.metrics import StreamingMetrics

TASKS = ('arousal', 'valence')


def _recording(rng, frames=1500, lead=30, gain=1.0, offset=0.0, noise=0.0):
  """Smooth random gold `[frames, 2]` and a prediction that leads it by `lead` frames.

  prediction[t] = gain * gold[t + lead] + offset + noise, so delaying the prediction by `lead`
  frames and undoing the affine distortion recovers the gold standard (up to the noise).
  """
  base = ndimage.gaussian_filter1d(rng.standard_normal((frames + lead, 2)), 12, axis=0) * 5
  gold = base[:frames]
  prediction = gain * base[lead:] + offset + noise * rng.standard_normal((frames, 2))
  return gold, prediction


def _concat_ccc(recordings, post=None):
  """ccc_concat per task of `recordings`, post-processed by `post` when given."""
  metrics = StreamingMetrics(TASKS)
  for index, (truth, prediction) in enumerate(recordings):
    metrics.update(str(index), truth, prediction if post is None else post.apply(prediction))
  table = metrics.compute()
  return np.array([table[task]['ccc_concat'] for task in TASKS])


def test_shift_delays_and_pads_with_the_first_value():
  np.testing.assert_array_equal(postprocess.shift([1., 2., 3., 4., 5.], 2), [1, 1, 1, 2, 3])
  np.testing.assert_array_equal(postprocess.shift([1., 2., 3.], 0), [1, 2, 3])
  np.testing.assert_array_equal(postprocess.shift([1., 2., 3.], 5), [1, 1, 1])
  two_tasks = np.array([[1., 10.], [2., 20.], [3., 30.]])
  np.testing.assert_array_equal(postprocess.shift(two_tasks, 1), [[1, 10], [1, 10], [2, 20]])


def test_shift_rejects_negative_or_fractional_delays():
  with pytest.raises(ValueError, match='non-negative whole number'):
    postprocess.shift([1., 2.], -1)
  with pytest.raises(ValueError, match='non-negative whole number'):
    postprocess.shift([1., 2.], 1.5)


def test_smooth_by_hand_keeps_length_and_edges():
  trace = np.array([0., 9., 0., 0., 3., 3., 3.])
  # Median of 3 removes the single spike; edges repeat the end values.
  np.testing.assert_array_equal(postprocess.smooth(trace, 'median', 3), [0, 0, 0, 0, 3, 3, 3])
  # Moving average of 3 with 'nearest' edges: frame 0 averages [0, 0, 9].
  np.testing.assert_allclose(postprocess.smooth(trace, 'mean', 3),
                             [3, 3, 3, 1, 2, 3, 3])
  np.testing.assert_array_equal(postprocess.smooth(trace, 'median', 1), trace)


def test_smooth_matches_numpy_reference_per_task():
  rng = np.random.default_rng(0)
  trace = rng.standard_normal((200, 2))
  window, half = 9, 4
  padded = np.pad(trace, ((half, half), (0, 0)), mode='edge')
  windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # [200, 2, 9]
  np.testing.assert_allclose(postprocess.smooth(trace, 'median', window),
                             np.median(windows, axis=-1))
  np.testing.assert_allclose(postprocess.smooth(trace, 'mean', window),
                             windows.mean(axis=-1), atol=1e-12)
  np.testing.assert_allclose(postprocess.smooth(trace[:, 1], 'mean', window),
                             windows[:, 1].mean(axis=-1), atol=1e-12)


def test_smooth_rejects_even_windows_and_unknown_kinds():
  with pytest.raises(ValueError, match='odd'):
    postprocess.smooth(np.zeros(10), 'median', 4)
  with pytest.raises(ValueError, match='kind'):
    postprocess.smooth(np.zeros(10), 'gaussian', 5)


def test_tune_finds_the_annotation_delay_and_improves_dev():
  rng = np.random.default_rng(1)
  dev = [_recording(rng, lead=30, noise=0.05) for _ in range(4)]
  post = postprocess.tune(dev, TASKS)
  for task in TASKS:
    steps = post.per_task[task]
    assert abs(steps.delay_frames - 30) <= 10  # within one grid step of the true lead
    assert 'delay' in steps.kept
    assert steps.dev_ccc_after > steps.dev_ccc_before
  before, after = _concat_ccc(dev), _concat_ccc(dev, post)
  assert np.all(after > before + 0.2)
  # The dev CCC recorded by tune is the one StreamingMetrics reports.
  np.testing.assert_allclose(after, [post.per_task[t].dev_ccc_after for t in TASKS], atol=1e-9)


def test_tune_keeps_nothing_for_a_perfect_prediction():
  rng = np.random.default_rng(2)
  dev = [(gold, gold.copy()) for gold, _ in (_recording(rng) for _ in range(3))]
  post = postprocess.tune(dev, TASKS)
  assert post.kept == {task: () for task in TASKS}
  for steps in post.per_task.values():
    assert steps.dev_ccc_after == steps.dev_ccc_before == pytest.approx(1.0)
  for _, prediction in dev:
    np.testing.assert_array_equal(post.apply(prediction), prediction)


def test_scale_and_bias_recover_an_affine_distortion():
  rng = np.random.default_rng(3)
  dev = [_recording(rng, lead=0, gain=0.5, offset=0.3) for _ in range(3)]
  post = postprocess.tune(dev, TASKS, delay_grid_frames=(0,), smoothing_windows=())
  for task in TASKS:
    steps = post.per_task[task]
    assert steps.kept == ('scale', 'bias')
    assert steps.scale == pytest.approx(2.0)
    assert steps.dev_ccc_after == pytest.approx(1.0)
  for gold, prediction in dev:
    np.testing.assert_allclose(post.apply(prediction), gold, atol=1e-9)


def test_apply_order_is_delay_smoothing_scale_bias():
  steps = postprocess.TaskPostProcessing(delay_frames=1, smoothing='median', smoothing_window=3,
                                         scale=2.0, center=1.0, bias=0.5)
  trace = np.array([0., 4., 1., 2., 8., 3.])
  expected = postprocess.smooth(postprocess.shift(trace, 1), 'median', 3)
  expected = (expected - 1.0) * 2.0 + 1.0 + 0.5
  np.testing.assert_allclose(steps.apply(trace), expected)
  assert steps.kept == postprocess.STEPS


def test_json_round_trip():
  rng = np.random.default_rng(4)
  dev = [_recording(rng, lead=20, gain=0.7, offset=-0.2, noise=0.1) for _ in range(3)]
  post = postprocess.tune(dev, TASKS, metric='ccc_seq_mean')
  data = json.loads(json.dumps(post.to_json()))
  assert data['tasks']['arousal']['kept'] == list(post.per_task['arousal'].kept)
  restored = postprocess.PostProcessing.from_json(data)
  assert restored == post
  assert restored.tasks == TASKS
  np.testing.assert_array_equal(restored.apply(dev[0][1]), post.apply(dev[0][1]))


def test_from_json_rejects_kept_steps_that_disagree_with_the_settings():
  data = postprocess.PostProcessing.identity(TASKS).to_json()
  data['tasks']['valence']['kept'] = ['bias']
  with pytest.raises(ValueError, match="'valence'.*disagree"):
    postprocess.PostProcessing.from_json(data)


def test_tuned_on_dev_applied_unchanged_improves_held_out_test():
  rng = np.random.default_rng(5)
  make = lambda: _recording(rng, lead=40, gain=0.6, offset=0.4, noise=0.3)
  dev = [make() for _ in range(5)]
  test = [make()]
  post = postprocess.tune(dev, TASKS)
  assert np.all(_concat_ccc(test, post) > _concat_ccc(test) + 0.1)


@pytest.mark.parametrize('truth, prediction, message', [
    (np.zeros((10, 2)), np.zeros((9, 2)), 'truth has 10 frames but prediction has 9'),
    (np.zeros((10, 2)), np.zeros((10, 3)), r'prediction must be \[frames, 2 tasks\]'),
    (np.zeros((10, 2)), np.full((10, 2), np.nan), 'prediction holds NaN'),
    (np.full((10, 2), np.nan), np.zeros((10, 2)), 'truth holds NaN'),
])
def test_tune_rejects_bad_dev_recordings(truth, prediction, message):
  with pytest.raises(ValueError, match=message):
    postprocess.tune([(truth, prediction)], TASKS)


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match='at least one dev recording'):
    postprocess.tune([], TASKS)
  with pytest.raises(ValueError, match='metric'):
    postprocess.tune([(np.zeros((5, 2)), np.zeros((5, 2)))], TASKS, metric='rmse')
  post = postprocess.PostProcessing.identity(TASKS)
  with pytest.raises(ValueError, match='NaN'):
    post.apply(np.array([[0., np.nan]]))
  with pytest.raises(ValueError, match=r'\[frames, 2 tasks\]'):
    post.apply(np.zeros((5, 3)))
