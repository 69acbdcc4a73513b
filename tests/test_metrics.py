"""Evaluation metrics against audmetric, scipy and exact reference values (tests/reference_values.py)."""

import math

import audmetric
import numpy as np
import pytest
import scipy.stats

from ccc_jax import metrics
from tests.reference_values import CONCAT_CCC, REFERENCE, SEQ_MEAN_CCC


def test_exact_references_are_the_published_values():
  # The exact derivation reproduces the reference values the library was first tested against.
  assert [round(ccc, 12) for *_, ccc, _ in REFERENCE] == [0.976789168279, 0.666666666667]
  assert [round(r, 12) for *_, r in REFERENCE] == [0.984869618448, 0.866025403784]


@pytest.mark.parametrize('truth,prediction,ccc,pcc', REFERENCE)
def test_reference_values(truth, prediction, ccc, pcc):
  assert metrics.concordance_cc(truth, prediction) == pytest.approx(ccc, abs=1e-12)
  assert metrics.pearson_cc(truth, prediction) == pytest.approx(pcc, abs=1e-12)


@pytest.mark.parametrize('length', [2, 3, 50, 10_000])
@pytest.mark.parametrize('offset', [0.0, 5.0, -40.0])
def test_concordance_matches_audmetric(length, offset):
  rng = np.random.default_rng(length)
  truth = rng.normal(offset, 2.0, length)
  prediction = truth * 0.4 + rng.normal(1.0, 1.0, length)
  assert metrics.concordance_cc(truth, prediction) == pytest.approx(
      audmetric.concordance_cc(truth, prediction), abs=1e-12)


def test_concordance_undefined_is_nan_like_audmetric():
  assert math.isnan(metrics.concordance_cc([1.0, 1.0], [1.0, 1.0]))
  assert math.isnan(audmetric.concordance_cc(np.array([1.0, 1.0]), np.array([1.0, 1.0])))
  assert math.isnan(metrics.concordance_cc([1.0], [2.0]))
  assert metrics.concordance_cc([1.0, 1.0], [0.0, 2.0]) == 0.0
  with pytest.raises(ValueError, match='3 values but prediction has 2'):
    metrics.concordance_cc([1, 2, 3], [1, 2])


def test_streaming_reference_example():
  """Mean of per-recording CCC and concatenated CCC differ (exact values: reference_values.py)."""
  streaming = metrics.StreamingMetrics(['arousal'])
  streaming.update('rec1', [0, 1, 2, 3], [.5, 1, 2, 2.5])
  streaming.update('rec2', [1, 1.5, 1, .5], [1.2, 1.4, 1.1, .4])
  table = streaming.compute()
  assert table['arousal']['ccc_seq_mean'] == pytest.approx(SEQ_MEAN_CCC, abs=1e-12)
  assert table['arousal']['ccc_concat'] == pytest.approx(CONCAT_CCC, abs=1e-12)
  assert (round(SEQ_MEAN_CCC, 5), round(CONCAT_CCC, 5)) == (0.93396, 0.94013)


def test_streaming_is_exact_for_any_chunking():
  rng = np.random.default_rng(0)
  tasks = ['activation', 'valence', 'dominance']
  recordings = {f'r{i}': (rng.normal(3.0, 0.1, (n, 3)), rng.normal(3.0, 0.2, (n, 3)))
                for i, n in enumerate([400, 250, 31])}
  whole = metrics.StreamingMetrics(tasks)
  chunked = metrics.StreamingMetrics(tasks)
  for name, (truth, prediction) in recordings.items():
    whole.update(name, truth, prediction)
    for piece in np.array_split(np.arange(len(truth)), 7):
      chunked.update(name, truth[piece], prediction[piece])
  a, b = whole.compute(), chunked.compute()
  truth_all = np.concatenate([t for t, _ in recordings.values()])
  prediction_all = np.concatenate([p for _, p in recordings.values()])
  for k, task in enumerate(tasks):
    for table in (a, b):
      assert table[task]['ccc_concat'] == pytest.approx(
          audmetric.concordance_cc(truth_all[:, k], prediction_all[:, k]), abs=1e-10)
      assert table[task]['ccc_seq_mean'] == pytest.approx(np.mean([
          audmetric.concordance_cc(t[:, k], p[:, k]) for t, p in recordings.values()]), abs=1e-10)
      assert table[task]['pcc'] == pytest.approx(
          scipy.stats.pearsonr(truth_all[:, k], prediction_all[:, k]).statistic, abs=1e-10)
      assert table[task]['rmse'] == pytest.approx(
          np.sqrt(np.mean((truth_all[:, k] - prediction_all[:, k]) ** 2)), abs=1e-12)
  assert a['mean']['ccc_concat'] == pytest.approx(
      np.mean([a[t]['ccc_concat'] for t in tasks]), abs=1e-12)


def test_streaming_mask_and_errors():
  streaming = metrics.StreamingMetrics(['a', 'v'])
  truth = np.array([[0., 1.], [1., 0.], [2., 2.], [9., 9.]])
  prediction = np.array([[0., 1.], [1., 1.], [2., 2.], [np.nan, np.nan]])
  streaming.update('r', truth, prediction, mask=[1, 1, 1, 0])
  table = streaming.compute()
  assert table['a']['ccc_concat'] == pytest.approx(1.0)
  assert table['v']['ccc_concat'] == pytest.approx(
      audmetric.concordance_cc(truth[:3, 1], prediction[:3, 1]))
  with pytest.raises(ValueError, match="recording 'x'.*NaN"):
    streaming.update('x', truth, prediction)
  with pytest.raises(ValueError, match='2 tasks'):
    streaming.update('y', truth[:, :1], prediction[:, :1])
  with pytest.raises(ValueError, match='no recordings'):
    metrics.StreamingMetrics(['a']).compute()
