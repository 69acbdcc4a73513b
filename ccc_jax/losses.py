"""Differentiable correlation losses (CCC, PCC) and MSE for traces shaped `[batch, time, tasks]`.

Owns the training objective. All tasks are computed in one vectorised pass; padded frames are
excluded by a mask; moments are population moments computed in two centred passes (the one-pass
`E[x^2] - E[x]^2` form loses digits in float32 when the mean is large against the spread).

CCC is not decomposable over examples, so under data parallelism the loss must be the CCC of the
*global* batch, not a mean of per-device CCCs. With `axis_name` set (inside `jax.shard_map` or
`jax.pmap`) the sufficient statistics are summed across that device axis: first `n, sum x, sum y`
to form the global means, then the centred second moments. Every device then holds the same
global loss; averaging gradients across devices (`pmean`) gives the one-device gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ccc_jax.config import LOSSES as LOSS_KINDS

# Keeps the losses and their gradients finite when a prediction or a target is constant
# (all second moments zero). Small against any real variance of unit-scale traces.
EPSILON = 1e-8


class Moments(NamedTuple):
  """Population moments per task, each shaped `[tasks]`."""
  count: jax.Array
  mean_pred: jax.Array
  mean_true: jax.Array
  var_pred: jax.Array
  var_true: jax.Array
  cov: jax.Array
  mse: jax.Array


def delay_aligned(predictions: jax.Array, targets: jax.Array, mask: jax.Array,
                  delay: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Output frame i against label frame i + `delay` (`model.label_delay`): the first
  `T - delay` outputs, the last `T - delay` labels and their mask, all `[batch, T - delay, ...]`.
  A window's first `delay` labels react to what happened before it, so they are never targets."""
  if delay == 0:
    return predictions, targets, mask
  if not 0 < delay < predictions.shape[1]:
    raise ValueError(f'label delay {delay} must be shorter than the window '
                     f'({predictions.shape[1]} frames)')
  length = predictions.shape[1] - delay
  return predictions[:, :length], targets[:, delay:], mask[:, delay:]


def _sum(x, axis_name):
  total = jnp.sum(x, axis=(0, 1))
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def moments(predictions: jax.Array, targets: jax.Array, mask: jax.Array | None = None,
            axis_name: str | None = None) -> Moments:
  """Two-pass masked population moments over batch and time, per task.

  Args:
    predictions, targets: `[batch, time, tasks]`.
    mask: `[batch, time]` or `[batch, time, tasks]`, 1 for real frames and 0 for padding
      (None: every frame counts).
    axis_name: a device axis to sum the statistics over (inside shard_map or pmap).
  """
  if predictions.shape != targets.shape or predictions.ndim != 3:
    raise ValueError(f'predictions {predictions.shape} and targets {targets.shape} must both be '
                     '[batch, time, tasks]')
  # At least float32: the moments of bfloat16 predictions (mixed precision) in bfloat16 would
  # keep 8 bits of the sums over a batch.
  predictions = predictions.astype(jnp.promote_types(predictions.dtype, jnp.float32))
  targets = targets.astype(jnp.promote_types(targets.dtype, jnp.float32))
  if mask is None:
    mask = jnp.ones(predictions.shape[:2], predictions.dtype)
  mask = mask.astype(predictions.dtype)
  if mask.ndim == 2:
    mask = mask[..., None]
  mask = jnp.broadcast_to(mask, predictions.shape)
  # Masked frames may hold anything (even NaN from padding): select, don't multiply.
  valid = mask > 0
  x = jnp.where(valid, predictions, 0)
  y = jnp.where(valid, targets, 0)

  count = jnp.maximum(_sum(mask, axis_name), 1.0)  # an all-padding batch gives loss 1, not NaN
  mean_x = _sum(x * mask, axis_name) / count
  mean_y = _sum(y * mask, axis_name) / count
  dx = jnp.where(valid, x - mean_x, 0)
  dy = jnp.where(valid, y - mean_y, 0)
  var_x = _sum(mask * dx * dx, axis_name) / count
  var_y = _sum(mask * dy * dy, axis_name) / count
  cov = _sum(mask * dx * dy, axis_name) / count
  mse = _sum(mask * jnp.square(x - y), axis_name) / count
  return Moments(count, mean_x, mean_y, var_x, var_y, cov, mse)


def concordance(m: Moments, eps: float = EPSILON) -> jax.Array:
  """CCC per task from moments: 2 cov / (var_x + var_y + (mean_x - mean_y)^2)."""
  return 2.0 * m.cov / (m.var_pred + m.var_true + jnp.square(m.mean_pred - m.mean_true) + eps)


def pearson(m: Moments, eps: float = EPSILON) -> jax.Array:
  """Pearson correlation per task from moments (eps inside the root keeps its gradient finite)."""
  return m.cov / jnp.sqrt(m.var_pred * m.var_true + eps)


def per_task_loss(kind: str, predictions: jax.Array, targets: jax.Array,
                  mask: jax.Array | None = None, axis_name: str | None = None,
                  eps: float = EPSILON) -> jax.Array:
  """Loss per task, shape `[tasks]`: `1 - CCC`, `1 - PCC` or the MSE."""
  if kind not in LOSS_KINDS:
    raise ValueError(f'unknown loss {kind!r}; expected one of {LOSS_KINDS}')
  m = moments(predictions, targets, mask, axis_name)
  if kind == 'ccc':
    return 1.0 - concordance(m, eps)
  if kind == 'pcc':
    return 1.0 - pearson(m, eps)
  return m.mse


def weighted_total(per_task: jax.Array, task_weights=None) -> jax.Array:
  """Weighted mean of the per-task losses: `sum(w_k L_k) / sum(w_k)` (equal weights if None).

  Dividing by the weight sum keeps the loss on the same scale for one task (STL) and three (MTL),
  so one learning rate serves both.
  """
  if task_weights is None:
    return jnp.mean(per_task)
  weights = jnp.asarray(task_weights, per_task.dtype)
  if weights.shape != per_task.shape:
    raise ValueError(f'{weights.shape[0] if weights.ndim else "scalar"} task weights for '
                     f'{per_task.shape[0]} tasks')
  return jnp.sum(weights * per_task) / jnp.sum(weights)


def loss(kind: str, predictions: jax.Array, targets: jax.Array, mask: jax.Array | None = None,
         task_weights=None, axis_name: str | None = None,
         eps: float = EPSILON) -> tuple[jax.Array, jax.Array]:
  """The training objective: `(weighted total, per-task losses [tasks])`."""
  per_task = per_task_loss(kind, predictions, targets, mask, axis_name, eps)
  return weighted_total(per_task, task_weights), per_task
