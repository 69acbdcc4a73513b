"""Correlation losses: reference values, independent references, masking, sharding, gradients."""

import audmetric
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.sharding import PartitionSpec as P

from ccc_jax import losses
from ccc_jax import sharding
from tests.reference_values import REFERENCE



def _as_btk(x, dtype=jnp.float64):
  return jnp.asarray(np.asarray(x, np.float64).reshape(1, -1, 1), dtype)


@pytest.mark.parametrize('truth,prediction,ccc,pcc', REFERENCE)
def test_reference_values_float64(truth, prediction, ccc, pcc):
  with jax.enable_x64(True):
    y, x = _as_btk(truth), _as_btk(prediction)
    assert float(losses.per_task_loss('ccc', x, y, eps=0)[0]) == pytest.approx(1 - ccc, abs=1e-12)
    assert float(losses.per_task_loss('pcc', x, y, eps=0)[0]) == pytest.approx(1 - pcc, abs=1e-12)
    mse = np.mean((np.asarray(truth) - np.asarray(prediction)) ** 2)
    assert float(losses.per_task_loss('mse', x, y)[0]) == pytest.approx(mse, abs=1e-12)


@pytest.mark.parametrize('length', [2, 7, 100, 5000])
@pytest.mark.parametrize('offset', [0.0, -3.0, 30.0])
def test_ccc_matches_audmetric_float64(length, offset):
  rng = np.random.default_rng(length)
  truth = rng.normal(offset, 1.0, length)
  prediction = 0.6 * truth + rng.normal(0.5, 0.8, length)
  with jax.enable_x64(True):
    got = 1 - float(losses.per_task_loss('ccc', _as_btk(prediction), _as_btk(truth), eps=0)[0])
  assert got == pytest.approx(audmetric.concordance_cc(truth, prediction), abs=1e-6)


def test_ccc_float32_large_mean_small_spread():
  """Two centred passes keep float32 accurate where E[x^2] - E[x]^2 would lose 3%."""
  rng = np.random.default_rng(0)
  truth = rng.normal(30.0, 0.05, 4096)
  prediction = truth + rng.normal(0.0, 0.03, 4096)
  expected = audmetric.concordance_cc(truth, prediction)
  got = 1 - float(losses.per_task_loss(
      'ccc', _as_btk(prediction, jnp.float32), _as_btk(truth, jnp.float32), eps=0)[0])
  assert got == pytest.approx(expected, rel=1e-4)


def test_bfloat16_predictions_give_float32_moments():
  # Mixed precision: the loss's sums must not be taken in bfloat16 (8 bits of mantissa).
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(4, 50, 2)).astype(np.float32)
  prediction = (truth + 0.3 * rng.normal(size=truth.shape)).astype(np.float32)
  as_bf16 = jnp.asarray(prediction, jnp.bfloat16)
  m = losses.moments(as_bf16, truth)
  assert all(x.dtype == jnp.float32 for x in m)
  np.testing.assert_allclose(
      losses.per_task_loss('ccc', as_bf16, truth),
      losses.per_task_loss('ccc', as_bf16.astype(jnp.float32), truth), rtol=1e-6)


def test_pcc_matches_scipy():
  rng = np.random.default_rng(1)
  truth = rng.normal(size=(3, 50, 2))
  prediction = truth * [0.3, -0.7] + rng.normal(size=truth.shape)
  with jax.enable_x64(True):
    got = 1 - np.asarray(losses.per_task_loss('pcc', jnp.asarray(prediction), jnp.asarray(truth),
                                              eps=0))
  for k in range(2):
    expected = scipy.stats.pearsonr(truth[..., k].ravel(), prediction[..., k].ravel()).statistic
    assert got[k] == pytest.approx(expected, abs=1e-10)


def test_tasks_are_vectorised_and_weighted():
  rng = np.random.default_rng(2)
  truth = jnp.asarray(rng.normal(size=(4, 30, 3)), jnp.float32)
  prediction = jnp.asarray(rng.normal(size=(4, 30, 3)), jnp.float32) + truth
  per_task = losses.per_task_loss('ccc', prediction, truth)
  for k in range(3):
    alone = losses.per_task_loss('ccc', prediction[..., k:k + 1], truth[..., k:k + 1])
    np.testing.assert_allclose(per_task[k], alone[0], rtol=1e-6)
  total, _ = losses.loss('ccc', prediction, truth, task_weights=[2.0, 1.0, 1.0])
  expected = (2 * per_task[0] + per_task[1] + per_task[2]) / 4
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  with pytest.raises(ValueError, match='2 task weights for 3 tasks'):
    losses.loss('ccc', prediction, truth, task_weights=[1.0, 1.0])
  with pytest.raises(ValueError, match="unknown loss 'cc'"):
    losses.per_task_loss('cc', prediction, truth)


@pytest.mark.parametrize('kind', losses.LOSS_KINDS)
def test_mask_excludes_padding(kind):
  """Padded frames (even NaN) change nothing: equal to the loss over the real frames alone."""
  rng = np.random.default_rng(3)
  lengths = [30, 17, 5]
  truth = rng.normal(size=(3, 30, 2)).astype(np.float32)
  prediction = (truth + rng.normal(size=truth.shape)).astype(np.float32)
  mask = np.zeros((3, 30), np.float32)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
  padded_truth, padded_prediction = truth.copy(), prediction.copy()
  padded_truth[mask == 0] = np.nan
  padded_prediction[mask == 0] = 1e6
  got, grad = jax.value_and_grad(
      lambda p: losses.loss(kind, p, jnp.asarray(padded_truth), jnp.asarray(mask))[0])(
          jnp.asarray(padded_prediction))
  flat_t = np.concatenate([truth[i, :n] for i, n in enumerate(lengths)])[None]
  flat_p = np.concatenate([prediction[i, :n] for i, n in enumerate(lengths)])[None]
  expected = losses.loss(kind, jnp.asarray(flat_p), jnp.asarray(flat_t))[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.all(np.asarray(grad)[mask == 0] == 0)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('kind', losses.LOSS_KINDS)
@pytest.mark.parametrize('constant', ['prediction', 'target', 'both'])
def test_constant_inputs_give_finite_loss_and_gradient(kind, constant):
  rng = np.random.default_rng(4)
  varying = jnp.asarray(rng.normal(size=(2, 10, 3)), jnp.float32)
  flat = jnp.full((2, 10, 3), 0.25, jnp.float32)
  prediction = flat if constant in ('prediction', 'both') else varying
  target = flat if constant in ('target', 'both') else varying
  value, grad = jax.value_and_grad(lambda p: losses.loss(kind, p, target)[0])(prediction)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('kind', losses.LOSS_KINDS)
def test_gradient_matches_finite_differences_float64(kind):
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    target = jnp.asarray(rng.normal(size=(2, 6, 2)))
    prediction = jnp.asarray(rng.normal(size=(2, 6, 2)))
    mask = jnp.asarray(np.array([[1] * 6, [1] * 4 + [0] * 2], np.float64))
    fn = jax.jit(lambda p: losses.loss(kind, p, target, mask, task_weights=[1.0, 3.0])[0])
    analytic = np.asarray(jax.grad(fn)(prediction))
    numeric = np.zeros_like(analytic)
    h = 1e-6
    for index in np.ndindex(prediction.shape):
      step = np.zeros(prediction.shape)
      step[index] = h
      numeric[index] = (fn(prediction + step) - fn(prediction - step)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8, rtol=1e-6)


def _sharded_loss_and_grad(kind, mesh, prediction, target, mask):
  """Loss and gradient of the global batch with statistics summed over the mesh's data axis."""
  def per_device(p, t, m):
    value, grad = jax.value_and_grad(
        lambda q: losses.loss(kind, q, t, m, axis_name=sharding.DATA_AXIS)[0])(p)
    return value, grad
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(sharding.DATA_AXIS),
                             out_specs=(P(), P(sharding.DATA_AXIS))))
  return fn(prediction, target, mask)


@pytest.mark.parametrize('kind', losses.LOSS_KINDS)
def test_sharded_loss_equals_one_device_loss(kind):
  """8 fake devices, statistics summed across them: the one-device loss and gradient."""
  assert jax.device_count() == 8
  rng = np.random.default_rng(6)
  target = jnp.asarray(rng.normal(size=(16, 12, 3)) + [0.0, 1.0, -2.0], jnp.float32)
  prediction = jnp.asarray(0.5 * target + rng.normal(size=target.shape), jnp.float32)
  mask = jnp.asarray(rng.random((16, 12)) > 0.2, jnp.float32)
  one_value, one_grad = jax.jit(jax.value_and_grad(
      lambda p: losses.loss(kind, p, target, mask)[0]))(prediction)
  value, grad = _sharded_loss_and_grad(kind, sharding.make_mesh(), prediction, target, mask)
  np.testing.assert_allclose(value, one_value, rtol=1e-6)
  np.testing.assert_allclose(grad, one_grad, rtol=1e-5, atol=1e-9)


def test_mean_of_per_device_ccc_is_a_different_objective():
  rng = np.random.default_rng(7)
  target = rng.normal(size=(16, 12, 1)) + np.arange(16)[:, None, None] * 0.3
  prediction = target + rng.normal(size=target.shape)
  with jax.enable_x64(True):
    global_loss = float(losses.loss('ccc', jnp.asarray(prediction), jnp.asarray(target))[0])
    per_device = [float(losses.loss('ccc', jnp.asarray(prediction[i:i + 2]),
                                    jnp.asarray(target[i:i + 2]))[0]) for i in range(0, 16, 2)]
  assert abs(np.mean(per_device) - global_loss) > 1e-3
