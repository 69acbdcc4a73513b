"""The default `AVDNet` written a second time in PyTorch, for speed comparisons (optional extra
`bench`: `pip install -e .[bench]`, or PyTorch's CPU wheel).

Owns the twin: the same layers in the same order (SAME-padded strided convolutions, GELU with
the tanh approximation, LayerNorm with flax's epsilon, the bidirectional GRU as `torch.nn.GRU`,
whose gate equations and order are ours), the same CCC loss (two-pass masked moments) and the
same clipping and AdamW; `load_jax_params` copies a JAX model's parameters into it, so both start
from the same values, and `benchmarks/model_speed.py --compare` checks that their outputs agree
before it times anything. Covers what the default config uses: the non-causal model with the
bidirectional GRU and the per-frame branches.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

LAYER_NORM_EPSILON = 1e-6  # flax's default
LOSS_EPSILON = 1e-8  # ccc_jax.losses.EPSILON


def _gelu(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x, approximate='tanh')  # jax.nn.gelu's default


class AudioBranch(nn.Module):
  """Strided 1-D convolutions, SAME padding as XLA computes it, channels-first."""

  def __init__(self, channels, kernel_sizes, strides):
    super().__init__()
    in_channels = (1,) + tuple(channels[:-1])
    self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, k, stride=s)
                               for c_in, c_out, k, s in zip(in_channels, channels, kernel_sizes,
                                                            strides))
    self.norm = nn.LayerNorm(channels[-1], eps=LAYER_NORM_EPSILON)

  def forward(self, audio: torch.Tensor) -> torch.Tensor:
    x = audio[:, None, :]
    for conv in self.convs:
      (k,), (s,) = conv.kernel_size, conv.stride
      length = x.shape[-1]
      total = max((-(-length // s) - 1) * s + k - length, 0)
      x = _gelu(conv(F.pad(x, (total // 2, total - total // 2))))
    return self.norm(x.transpose(1, 2))


class FrameBranch(nn.Module):
  def __init__(self, rows_per_frame: int, feature_dim: int, width: int):
    super().__init__()
    self.rows_per_frame = rows_per_frame
    self.hidden = nn.Linear(rows_per_frame * feature_dim, width)
    self.out = nn.Linear(width, width)
    self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPSILON)

  def forward(self, rows: torch.Tensor) -> torch.Tensor:
    batch, steps, _ = rows.shape
    x = rows.reshape(batch, steps // self.rows_per_frame, -1)
    return self.norm(self.out(_gelu(self.hidden(x))))


class BidirectionalGRULayer(nn.Module):
  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.gru = nn.GRU(width, hidden, batch_first=True, bidirectional=True)
    self.out = nn.Linear(2 * hidden, width)
    self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPSILON)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    both, _ = self.gru(x)
    return self.norm(x + self.out(both))


class AVDNet(nn.Module):
  """The twin of `ccc_jax.models.AVDNet` for a non-causal GRU config."""

  def __init__(self, config, num_tasks: int, input_dims: Mapping[str, int]):
    super().__init__()
    if config.causal or config.temporal != 'gru' or config.compute_dtype != 'float32':
      raise ValueError('the PyTorch twin covers the non-causal float32 GRU model only')
    rows = {'logmel': config.logmel_frames_per_label, 'mocap': 1}
    widths = {'logmel': config.logmel_width, 'mocap': config.mocap_width}
    unknown = [m for m in config.modalities if m not in ('audio', *rows)]
    if unknown:
      raise ValueError(f'the PyTorch twin has no branch for {unknown}')
    self.modalities = tuple(config.modalities)
    branches = {}
    for m in self.modalities:
      branches[m] = (AudioBranch(config.audio_channels, config.audio_kernel_sizes,
                                 config.audio_strides) if m == 'audio'
                     else FrameBranch(rows[m], input_dims[m], widths[m]))
    self.branches = nn.ModuleDict(branches)
    fused = sum(config.audio_channels[-1] if m == 'audio' else widths[m] for m in self.modalities)
    width = config.trunk_width
    self.fusion = nn.Linear(fused, width)
    self.fusion_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPSILON)
    self.temporal = nn.ModuleList(BidirectionalGRULayer(width, config.gru_hidden)
                                  for _ in range(config.gru_layers))
    self.hidden_kernel = nn.Parameter(torch.zeros(num_tasks, width, config.head_hidden))
    self.hidden_bias = nn.Parameter(torch.zeros(num_tasks, config.head_hidden))
    self.output_kernel = nn.Parameter(torch.zeros(num_tasks, config.head_hidden))
    self.output_bias = nn.Parameter(torch.zeros(num_tasks))

  def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    parts = [self.branches[m](inputs[m]) for m in self.modalities]
    x = _gelu(self.fusion_norm(self.fusion(torch.cat(parts, dim=-1))))
    for layer in self.temporal:
      x = layer(x)
    h = _gelu(torch.einsum('btd,kdh->btkh', x, self.hidden_kernel) + self.hidden_bias)
    return torch.einsum('btkh,kh->btk', h, self.output_kernel) + self.output_bias


def load_jax_params(twin: AVDNet, params: Mapping[str, Any]) -> None:
  """Copies the parameters of a `ccc_jax.models.AVDNet` (`nnx.split(model, nnx.Param)[1]` as a
  pure dict, one seed) into the twin; every twin parameter must be written exactly once."""
  written = {}

  def put(name: str, value) -> None:
    written[name] = torch.from_numpy(np.array(value, np.float32))

  def linear(prefix: str, p) -> None:
    put(f'{prefix}.weight', np.asarray(p['kernel']).T)
    put(f'{prefix}.bias', p['bias'])

  def norm(prefix: str, p) -> None:
    put(f'{prefix}.weight', p['scale'])
    put(f'{prefix}.bias', p['bias'])

  for m in twin.modalities:
    p = params['branches'][m]
    if m == 'audio':
      for i, conv in p['convs'].items():
        put(f'branches.audio.convs.{i}.weight', np.transpose(np.asarray(conv['kernel']), (2, 1, 0)))
        put(f'branches.audio.convs.{i}.bias', conv['bias'])
    else:
      linear(f'branches.{m}.hidden', p['hidden'])
      linear(f'branches.{m}.out', p['out'])
    norm(f'branches.{m}.norm', p['norm'])
  linear('fusion', params['fusion'])
  norm('fusion_norm', params['fusion_norm'])
  for i, p in params['temporal']['layers'].items():
    kernel, bias = np.asarray(p['input_proj']['kernel']), np.asarray(p['input_proj']['bias'])
    gates = kernel.shape[1] // 2  # [forward (r, z, n) | backward (r, z, n)], as torch's order
    for direction, suffix in ((0, ''), (1, '_reverse')):
      columns = slice(direction * gates, (direction + 1) * gates)
      put(f'temporal.{i}.gru.weight_ih_l0{suffix}', kernel[:, columns].T)
      put(f'temporal.{i}.gru.bias_ih_l0{suffix}', bias[columns])
      put(f'temporal.{i}.gru.weight_hh_l0{suffix}', np.asarray(p['recurrent_kernel'])[direction].T)
      put(f'temporal.{i}.gru.bias_hh_l0{suffix}', np.asarray(p['recurrent_bias'])[direction])
    linear(f'temporal.{i}.out', p['out'])
    norm(f'temporal.{i}.norm', p['norm'])
  heads = params['heads']
  for name in ('hidden_kernel', 'hidden_bias', 'output_kernel', 'output_bias'):
    put(name, heads[name])
  own = dict(twin.named_parameters())
  if set(own) != set(written):
    raise ValueError(f'parameters not matched: twin only {sorted(set(own) - set(written))}, '
                     f'JAX only {sorted(set(written) - set(own))}')
  with torch.no_grad():
    for name, value in written.items():
      if own[name].shape != value.shape:
        raise ValueError(f'{name}: twin {tuple(own[name].shape)}, JAX {tuple(value.shape)}')
      own[name].copy_(value)


def ccc_loss(predictions: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
  """Mean over tasks of 1 - CCC, from two-pass masked population moments (as
  `ccc_jax.losses.loss('ccc', ...)`)."""
  mask = mask.to(predictions.dtype)[..., None].expand_as(predictions)
  valid = mask > 0
  x = torch.where(valid, predictions, 0.0)
  y = torch.where(valid, targets, 0.0)
  count = mask.sum(dim=(0, 1)).clamp(min=1.0)
  mean_x = (x * mask).sum(dim=(0, 1)) / count
  mean_y = (y * mask).sum(dim=(0, 1)) / count
  dx = torch.where(valid, x - mean_x, 0.0)
  dy = torch.where(valid, y - mean_y, 0.0)
  var_x = (mask * dx * dx).sum(dim=(0, 1)) / count
  var_y = (mask * dy * dy).sum(dim=(0, 1)) / count
  cov = (mask * dx * dy).sum(dim=(0, 1)) / count
  ccc = 2.0 * cov / (var_x + var_y + (mean_x - mean_y) ** 2 + LOSS_EPSILON)
  return (1.0 - ccc).mean()


def make_train_step(twin: AVDNet, learning_rate: float, weight_decay: float, clip_norm: float):
  """`step(inputs, labels, mask) -> loss`: forward, CCC loss, backward, global-norm clipping and
  AdamW (optax's defaults are torch's: betas 0.9/0.999, eps 1e-8), at a constant learning rate
  (the schedule costs nothing measurable)."""
  optimizer = torch.optim.AdamW(twin.parameters(), lr=learning_rate, weight_decay=weight_decay)

  def step(inputs, labels, mask) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = ccc_loss(twin(inputs), labels, mask)
    loss.backward()
    nn.utils.clip_grad_norm_(twin.parameters(), clip_norm)
    optimizer.step()
    return float(loss)
  return step
