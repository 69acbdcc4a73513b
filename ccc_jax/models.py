"""The emotion-trace network: per-modality branches, fusion, a temporal model and multi-task heads.

Owns `AVDNet` (its hyper-parameters are `ccc_jax.config.ModelConfig`). One network covers every
experiment: which modality branches exist is `config.modalities` (unimodal and multimodal models
differ only there), the temporal model is `config.temporal` ('tcn' or 'gru'), and single-task
learning is the same network with `num_tasks=1`. `config.causal` makes every layer see only the
past (left-padded audio convolutions, a forward-only GRU); such a model also runs as a stream,
block by block (`AVDNet.stream`): each frame is its last output over the training window ending
there.

Inputs follow the data contract in BUILD_NOTES.md, per window of T label frames (25 Hz):
`audio` [B, T*640], `logmel` [B, T*4, 40], `egemaps` [B, T*4, 25], `egemaps_functionals`
[B, T, F], `mocap` [B, T, D], already z-normalised. Every branch
maps its modality to one embedding per label frame, [B, T, width], so fusion is a per-frame
concatenation. Output: [B, T, num_tasks].

Built for functional use (`nnx.split(model, nnx.Param)` / `nnx.merge`) inside jit, shard_map and
vmap: every piece of state is an `nnx.Param` and nothing is written during a forward pass (no
BatchNorm, no RNG streams: while training, dropout draws from per-window keys passed in; the GRU
carry starts at zeros; `stream` takes and returns its history explicitly).

Mixed precision (`config.compute_dtype='bfloat16'`): every layer computes in bfloat16 from
float32 parameters (cast at use; gradients and the optimiser stay float32). What stays float32:
the LayerNorm statistics (flax computes them in at least float32), the GRU's carry and gate
arithmetic (its recurrent matmul is bfloat16 with float32 accumulation: the carry is summed over
every step of the window) and the outputs, so that the loss's moments and the evaluation's CCC
see float32 predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp

from ccc_jax.config import ModelConfig
from ccc_jax.egemaps import EGEMAPS_PER_FRAME

# `ModelConfig.compute_dtype` -> the dtype the layers compute in.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _lecun_normal(in_axis=-2, out_axis=-1, batch_axis=()):
  return jax.nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=in_axis, out_axis=out_axis,
      batch_axis=batch_axis)


def _conv_nwc(inputs, kernel, stride, padding, precision):
  return jax.lax.conv_general_dilated(inputs, kernel, (stride,), [padding],
                                      dimension_numbers=('NWC', 'WIO', 'NWC'), precision=precision)


def _block_conv(inputs, kernel, stride, padding, precision):
  """`_strided_conv` written as a stride-1 convolution over blocks of `stride` samples."""
  kernel_size, channels, features = kernel.shape
  taps = -(-kernel_size // stride)  # kernel blocks of `stride` samples, the last zero-padded
  kernel = jnp.pad(kernel, ((0, taps * stride - kernel_size), (0, 0), (0, 0)))
  inputs = jnp.pad(inputs, ((0, 0), padding, (0, 0)))
  out_length = (inputs.shape[1] - kernel_size) // stride + 1
  needed = stride * (out_length + taps - 1)  # the samples the outputs read, and no more
  inputs = jnp.pad(inputs[:, :needed], ((0, 0), (0, max(needed - inputs.shape[1], 0)), (0, 0)))
  blocks = inputs.reshape(inputs.shape[0], out_length + taps - 1, stride * channels)
  return _conv_nwc(blocks, kernel.reshape(taps, stride * channels, features), 1, (0, 0),
                   precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(inputs, kernel, stride, padding, precision):
  """The strided convolution of `inputs` [B, L, C] with `kernel` [k, C, O], `padding` (left,
  right) samples. Differentiated, it runs as `_block_conv` (see `StridedConv`)."""
  return _conv_nwc(inputs, kernel, stride, padding, precision)


def _strided_conv_forward(inputs, kernel, stride, padding, precision):
  return jax.vjp(functools.partial(_block_conv, stride=stride, padding=padding,
                                   precision=precision), inputs, kernel)


def _strided_conv_backward(stride, padding, precision, block_conv_vjp, outputs_grad):
  del stride, padding, precision  # in block_conv_vjp
  return block_conv_vjp(outputs_grad)


_strided_conv.defvjp(_strided_conv_forward, _strided_conv_backward)


class StridedConv(nnx.Conv):
  """A 1-D strided convolution whose gradients are computed as those of a stride-1
  convolution over blocks of `stride` samples: the same parameters as `nnx.Conv` (a drop-in:
  checkpoints do not change), the same outputs (bit for bit when the stride divides the kernel
  size) and gradients equal to float32 rounding (tested).

  Why: a strided convolution's gradients lower, on XLA:CPU, to a convolution over the input
  dilated by the stride (input gradient) and one with a window dilated by it (kernel
  gradient), which compute over the inserted zeros: the input gradient of the second audio
  layer took 6x its forward pass. With the input reshaped to [B, L / s, s * C] and the kernel
  [k, C, O] to [k / s, s * C, O] (both free reshapes), the same sums are a stride-1
  convolution, whose gradients are undilated convolutions. Differentiated, the layer runs in
  the block form throughout; undifferentiated (evaluation, inference), as the strided
  convolution, which XLA:CPU runs faster forward (BUILD_NOTES.md, "Closing the gap:
  block-form gradients and the unrolled GRU"). A kernel size that the stride does not divide gets zero taps in the block
  form.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """[B, L, C_in] -> [B, L_out, C_out] with nnx.Conv's 'SAME' or 'VALID' output length."""
    (kernel_size,) = self.kernel_size
    (stride,) = (self.strides,) if isinstance(self.strides, int) else self.strides
    inputs, kernel, bias = self.promote_dtype(
        (inputs, self.kernel[...], self.bias[...]), dtype=self.dtype)
    padding = (0, 0)
    if self.padding == 'SAME':  # as lax's 'SAME': ceil(L / stride) outputs, centred
      length = inputs.shape[1]
      total = max((-(-length // stride) - 1) * stride + kernel_size - length, 0)
      padding = (total // 2, total - total // 2)
    return _strided_conv(inputs, kernel, stride, padding, self.precision) + bias


class AudioBranch(nnx.Module):
  """Strided 1-D convolutions from the waveform to one embedding per label frame."""

  def __init__(self, config: ModelConfig, samples_per_frame: int, *,
               rngs: nnx.Rngs):
    dtype = DTYPES[config.compute_dtype]
    channels = tuple(config.audio_channels)
    kernel_sizes = tuple(config.audio_kernel_sizes)
    strides = tuple(config.audio_strides)
    if not len(channels) == len(kernel_sizes) == len(strides):
      raise ValueError(
          'audio_channels, audio_kernel_sizes and audio_strides need one entry per layer, got '
          f'{len(channels)}, {len(kernel_sizes)} and {len(strides)}')
    if math.prod(strides) != samples_per_frame:
      raise ValueError(
          f'audio_strides {strides} multiply to {math.prod(strides)}, but the dataset has '
          f'{samples_per_frame} audio samples per label frame; they must match so that the '
          'audio branch yields exactly one embedding per label frame')
    self.samples_per_frame = samples_per_frame
    self.causal = config.causal
    # Samples of the past the last embedding of a frame sees besides the frame's own: the
    # receptive field of the stack (VALID convolutions) minus one frame.
    receptive_field = kernel_sizes[0] + sum(
        (k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernel_sizes) if i > 0)
    self.context = receptive_field - samples_per_frame
    in_channels = (1,) + channels[:-1]
    # Causal: VALID convolutions over the input padded on the left by `context` zeros, so frame
    # t's embedding sees samples [640 (t + 1) - receptive_field, 640 (t + 1)): its own and the
    # past, and a stream can continue from the last `context` samples (`frames`).
    self.convs = nnx.List([
        StridedConv(c_in, c_out, kernel_size=k, strides=s,
                    padding='VALID' if self.causal else 'SAME', dtype=dtype, rngs=rngs)
        for c_in, c_out, k, s in zip(in_channels, channels, kernel_sizes, strides)])
    self.norm = nnx.LayerNorm(channels[-1], dtype=dtype, rngs=rngs)
    self.width = channels[-1]

  def __call__(self, audio: jax.Array) -> jax.Array:
    """[B, T * samples_per_frame] -> [B, T, width]."""
    if audio.ndim != 2 or audio.shape[1] % self.samples_per_frame:
      raise ValueError(
          f'audio must be [B, T*{self.samples_per_frame}], got shape {audio.shape}')
    if self.causal:
      return self.frames(jnp.pad(audio, ((0, 0), (self.context, 0))))
    return self._stack(audio)

  def frames(self, audio: jax.Array) -> jax.Array:
    """Causal only: [B, context + n * samples_per_frame] (the `context` samples before the
    n frames, zeros before a stream's start) -> [B, n, width]."""
    if not self.causal:
      raise ValueError('frames() is the causal branch\'s streaming form')
    return self._stack(audio)

  def _stack(self, audio: jax.Array) -> jax.Array:
    x = audio[..., None]
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    return self.norm(x)


class FrameBranch(nnx.Module):
  """Per-label-frame MLP over the feature rows of each label frame, stacked: the log-mel and
  eGeMAPS frames (4 rows of 10 ms per label frame), the mocap features and the AVEC functionals
  (1 row)."""

  def __init__(self, modality: str, rows_per_frame: int, feature_dim: int, width: int, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.modality = modality
    self.rows_per_frame = rows_per_frame
    self.feature_dim = feature_dim
    self.hidden = nnx.Linear(rows_per_frame * feature_dim, width, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.width = width

  def __call__(self, rows: jax.Array) -> jax.Array:
    """[B, T * rows_per_frame, feature_dim] -> [B, T, width]."""
    if rows.ndim != 3 or rows.shape[1] % self.rows_per_frame or rows.shape[2] != self.feature_dim:
      expected = 'T' if self.rows_per_frame == 1 else f'T*{self.rows_per_frame}'
      raise ValueError(f'{self.modality} must be [B, {expected}, {self.feature_dim}], got shape '
                       f'{rows.shape}')
    batch, rows_in, _ = rows.shape
    x = rows.reshape(batch, rows_in // self.rows_per_frame, -1)
    return self.norm(self.out(jax.nn.gelu(self.hidden(x))))


class DilatedResidualBlock(nnx.Module):
  """Pre-norm residual block: LayerNorm, dilated non-causal conv over time, GELU, projection."""

  def __init__(self, width: int, kernel_size: int, dilation: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.conv = nnx.Conv(width, width, kernel_size=kernel_size, kernel_dilation=dilation,
                         padding='SAME', dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.proj(jax.nn.gelu(self.conv(self.norm(x))))


class TemporalConvNet(nnx.Module):
  """Stack of dilated residual blocks (non-causal: each frame sees past and future context)."""

  def __init__(self, width: int, kernel_size: int, dilations: Sequence[int], *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        DilatedResidualBlock(width, kernel_size, d, dtype=dtype, rngs=rngs) for d in dilations])
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    return self.norm(x)


# Steps of a scan unrolled when it is not differentiated: 50 ran the default 100-frame window's
# inference at 0.97-0.99x the speed of the full unroll and compiled in 3.5 s against 5.3 s.
SCAN_UNROLL = 50


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(step, params, carry, xs):
  """`jax.lax.scan(partial(step, params), carry, xs)`, unrolled by `SCAN_UNROLL` steps when not
  differentiated.

  Why: XLA:CPU runs each iteration of a rolled loop as separate small kernels; unrolled, the
  GRU's evaluation and inference ran 1.4-1.5x faster, with the same outputs bit for bit
  (measured: BUILD_NOTES.md "Closing the gap"). Differentiated, the rolled scan: unrolling
  slowed the training step down (0.6-0.9x) and its compile.
  """
  length = jax.tree.leaves(xs)[0].shape[0]
  return jax.lax.scan(functools.partial(step, params), carry, xs,
                      unroll=max(min(length, SCAN_UNROLL), 1))


def _scan_forward(step, params, carry, xs):
  return jax.vjp(lambda p, c, x: jax.lax.scan(functools.partial(step, p), c, x),
                 params, carry, xs)


def _scan_backward(step, scan_vjp, cotangents):
  del step  # in scan_vjp
  return scan_vjp(cotangents)


_scan.defvjp(_scan_forward, _scan_backward)


def _bidirectional_gru_step(params, h, gate_x, *, dtype):
  """One step of both directions: h [2, B, H] (float32), gate_x [2, B, 3H] the input's gates."""
  recurrent_kernel, recurrent_bias = params
  gate_h = jnp.einsum('dbh,dhg->dbg', h.astype(dtype), recurrent_kernel,
                      preferred_element_type=jnp.float32) + recurrent_bias
  h = _gru_update(gate_x, gate_h, h)
  return h, h


def _gru_update(gate_x, gate_h, h):
  """The next GRU state from the input's and the state's gates (reset, update, candidate, in
  `nnx.GRUCell`'s order and equations) and the state."""
  x_reset, x_update, x_candidate = jnp.split(gate_x, 3, axis=-1)
  h_reset, h_update, h_candidate = jnp.split(gate_h, 3, axis=-1)
  reset = jax.nn.sigmoid(x_reset + h_reset)
  update = jax.nn.sigmoid(x_update + h_update)
  candidate = jnp.tanh(x_candidate + reset * h_candidate)
  return (1.0 - update) * candidate + update * h


class BidirectionalGRULayer(nnx.Module):
  """One bidirectional GRU layer with a residual projection back to the input width.

  Written on `jax.lax.scan` rather than `nnx.RNN`, which keeps an RNG stream for the initial
  carry and advances it on every call (state that would change during a forward pass). Both
  directions run in the same scan (the backward one over the time-reversed sequence), and the
  input projections of all frames are computed before the scan, so each step does only the
  recurrent matmul.
  """

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.hidden = hidden
    self.dtype = dtype
    # Gates in the order (reset, update, candidate), as in `nnx.GRUCell`; leading axis of the
    # recurrent weights is the direction (0 forward, 1 backward).
    self.input_proj = nnx.Linear(width, 2 * 3 * hidden, dtype=dtype, rngs=rngs)
    orthogonal = jax.nn.initializers.orthogonal()
    self.recurrent_kernel = nnx.Param(jnp.stack([
        orthogonal(rngs.params(), (hidden, 3 * hidden)) for _ in range(2)]))
    self.recurrent_bias = nnx.Param(jnp.zeros((2, 3 * hidden)))
    self.out = nnx.Linear(2 * hidden, width, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, steps, _ = x.shape
    hidden = self.hidden
    gates_x = self.input_proj(x).reshape(batch, steps, 2, 3 * hidden)
    gates_x = jnp.stack([gates_x[:, :, 0], jnp.flip(gates_x[:, :, 1], axis=1)])  # [2,B,T,3H]
    gates_x = jnp.moveaxis(gates_x, 2, 0)  # time first for scan: [T, 2, B, 3H]
    # The carry and the gates stay float32 (see the module docstring); float32 in, float32 out.
    gates_x = gates_x.astype(jnp.float32)
    recurrent_kernel = self.recurrent_kernel[...].astype(self.dtype)
    recurrent_bias = self.recurrent_bias[...][:, None, :]
    # zeros_like (not jnp.zeros) so that inside shard_map the carry is typed as varying over
    # the same mesh axes as the data, which scan requires of its carry.
    h0 = jnp.zeros_like(gates_x[0, :, :, :hidden])  # [2, B, H]
    step = functools.partial(_bidirectional_gru_step, dtype=self.dtype)
    _, states = _scan(step, (recurrent_kernel, recurrent_bias), h0, gates_x)  # [T, 2, B, H]
    forward, backward = states[:, 0], jnp.flip(states[:, 1], axis=0)
    both = jnp.moveaxis(jnp.concatenate([forward, backward], axis=-1), 0, 1)  # [B, T, 2H]
    return self.norm(x + self.out(both))


class BidirectionalGRU(nnx.Module):
  """Stack of bidirectional GRU layers."""

  def __init__(self, width: int, hidden: int, num_layers: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.layers = nnx.List([
        BidirectionalGRULayer(width, hidden, dtype=dtype, rngs=rngs) for _ in range(num_layers)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer(x)
    return x


class CausalGRULayer(nnx.Module):
  """One forward-only GRU layer with a residual projection back to the input width."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.hidden = hidden
    self.dtype = dtype
    # Gates in the order (reset, update, candidate), as in `nnx.GRUCell`.
    self.input_proj = nnx.Linear(width, 3 * hidden, dtype=dtype, rngs=rngs)
    self.recurrent_kernel = nnx.Param(
        jax.nn.initializers.orthogonal()(rngs.params(), (hidden, 3 * hidden)))
    self.recurrent_bias = nnx.Param(jnp.zeros((3 * hidden,)))
    self.out = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """`x` [B, T, width] -> [B, T, width], the carry starting at zeros. `valid` [B, T]: a step
    where it is false leaves the carry unchanged (a window that starts before a stream's first
    frame skips the frames before it)."""
    # The carry and the gates stay float32 (see the module docstring).
    gates_x = jnp.moveaxis(self.input_proj(x), 1, 0).astype(jnp.float32)  # [T, B, 3H]
    if valid is None:
      valid = jnp.ones(x.shape[:2], bool)
    recurrent_kernel = self.recurrent_kernel[...].astype(self.dtype)
    recurrent_bias = self.recurrent_bias[...]

    def step(h, inputs):
      gate_x, keep = inputs
      gate_h = jnp.matmul(h.astype(self.dtype), recurrent_kernel,
                          preferred_element_type=jnp.float32) + recurrent_bias
      h = jnp.where(keep[:, None], _gru_update(gate_x, gate_h, h), h)
      return h, h

    # zeros_like (not jnp.zeros): typed as the data inside shard_map, as scan requires.
    h0 = jnp.zeros_like(gates_x[0, :, :self.hidden])
    _, states = jax.lax.scan(step, h0, (gates_x, jnp.moveaxis(valid, 1, 0)))
    return self.norm(x + self.out(jnp.moveaxis(states, 0, 1)))


class CausalGRU(nnx.Module):
  """Stack of forward-only GRU layers."""

  def __init__(self, width: int, hidden: int, num_layers: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.layers = nnx.List([CausalGRULayer(width, hidden, dtype=dtype, rngs=rngs)
                            for _ in range(num_layers)])

  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    for layer in self.layers:
      x = layer(x, valid)
    return x


class MultiTaskHeads(nnx.Module):
  """One hidden layer and one linear output per task, all tasks in one fused einsum pass."""

  def __init__(self, width: int, hidden: int, num_tasks: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.hidden_kernel = nnx.Param(
        _lecun_normal(batch_axis=0)(rngs.params(), (num_tasks, width, hidden)))
    self.hidden_bias = nnx.Param(jnp.zeros((num_tasks, hidden)))
    self.output_kernel = nnx.Param(
        _lecun_normal(in_axis=-1, out_axis=(), batch_axis=0)(
            rngs.params(), (num_tasks, hidden)))
    self.output_bias = nnx.Param(jnp.zeros((num_tasks,)))

  def __call__(self, x: jax.Array, dropout=None) -> jax.Array:
    """[B, T, width] -> [B, T, num_tasks] (float32); `dropout` applies to the hidden layer."""
    dtype = self.dtype
    h = (jnp.einsum('btd,kdh->btkh', x.astype(dtype), self.hidden_kernel[...].astype(dtype))
         + self.hidden_bias[...].astype(dtype))
    h = jax.nn.gelu(h)
    if dropout is not None:
      h = dropout(h)
    out = jnp.einsum('btkh,kh->btk', h, self.output_kernel[...].astype(dtype),
                     preferred_element_type=jnp.float32)
    return out + self.output_bias[...]


class _Dropout:
  """Dropout with one key per example (`keys` [B, 2]), each use of it salted differently, so
  a mask depends only on the example's key: on neither the batch layout nor the devices."""

  def __init__(self, rate: float, keys: jax.Array):
    self.rate, self.keys, self.uses = rate, keys, 0

  def next_keys(self) -> jax.Array:
    self.uses += 1
    return jax.vmap(lambda key: jax.random.fold_in(key, self.uses))(self.keys)

  def __call__(self, x: jax.Array) -> jax.Array:
    keys = self.next_keys()
    if self.rate == 0.0:
      return x
    def one(example, key):
      keep = jax.random.bernoulli(key, 1.0 - self.rate, example.shape)
      return jnp.where(keep, example / (1.0 - self.rate), 0.0)
    return jax.vmap(one)(x, keys)


def _modality_dropout(embeddings: list[jax.Array], rate: float, keys: jax.Array) -> list[jax.Array]:
  """Drops each modality's embedding of a window with probability `rate`, never all of them,
  scaling the kept ones by (modalities / kept)."""
  count = len(embeddings)
  keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, (count,)))(keys)  # [B, M]
  keep = jnp.where(keep.any(axis=1, keepdims=True), keep, True)
  scale = count / keep.sum(axis=1)
  return [e * (keep[:, m] * scale)[:, None, None].astype(e.dtype)
          for m, e in enumerate(embeddings)]


def _branch(modality: str, config: ModelConfig, input_dim: int, rngs: nnx.Rngs) -> nnx.Module:
  if modality == 'audio':
    return AudioBranch(config, input_dim, rngs=rngs)
  # Rows per label frame and width of each per-frame branch.
  rows, width = {
      'logmel': (config.logmel_frames_per_label, config.logmel_width),
      'egemaps': (EGEMAPS_PER_FRAME, config.egemaps_width),
      'egemaps_functionals': (1, config.functionals_width),
      'mocap': (1, config.mocap_width),
  }[modality]
  return FrameBranch(modality, rows, input_dim, width, dtype=DTYPES[config.compute_dtype],
                     rngs=rngs)


class AVDNet(nnx.Module):
  """Multimodal (or unimodal) multi-task network from input windows to per-frame traces."""

  def __init__(self, config: ModelConfig, *, num_tasks: int,
               input_dims: Mapping[str, int], rngs: nnx.Rngs):
    """Builds the branches named in `config.modalities`.

    Args:
      config: hyper-parameters (validated by `ModelConfig` itself).
      num_tasks: number of output traces K (3 for activation/valence/dominance, 1 for STL).
      input_dims: what the dataset has, per modality: 'audio' -> samples per label frame,
        'logmel' -> mel bins, 'egemaps' -> LLDs (25), 'egemaps_functionals' and 'mocap' ->
        feature dimension. Modalities the model does not use
        are ignored.
      rngs: parameter initialisation; the same seed gives the same parameters.

    Raises:
      ValueError: a modality in `config.modalities` is missing from `input_dims`, or the audio
        strides do not match the dataset's samples per label frame.
    """
    modalities = tuple(config.modalities)
    for modality in modalities:
      if modality not in input_dims:
        raise ValueError(
            f"the model uses modality '{modality}' (config.modalities={modalities}), but the "
            f'dataset has only {sorted(input_dims)}; drop it from config.modalities or use a '
            'dataset that has it')
    if num_tasks < 1:
      raise ValueError(f'num_tasks must be at least 1, got {num_tasks}')

    self.modalities = modalities
    self.num_tasks = num_tasks
    self.branches = nnx.Dict({m: _branch(m, config, input_dims[m], rngs) for m in modalities})
    fused_width = sum(branch.width for branch in self.branches.values())
    width = config.trunk_width
    dtype = DTYPES[config.compute_dtype]
    self.fusion = nnx.Linear(fused_width, width, dtype=dtype, rngs=rngs)
    self.fusion_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.causal = config.causal
    if config.causal:
      self.temporal = CausalGRU(width, config.gru_hidden, config.gru_layers, dtype=dtype,
                                rngs=rngs)
    elif config.temporal == 'tcn':
      self.temporal = TemporalConvNet(
          width, config.tcn_kernel_size, tuple(config.tcn_dilations), dtype=dtype, rngs=rngs)
    else:
      self.temporal = BidirectionalGRU(width, config.gru_hidden, config.gru_layers, dtype=dtype,
                                       rngs=rngs)
    self.heads = MultiTaskHeads(width, config.head_hidden, num_tasks, dtype=dtype, rngs=rngs)
    self.dropout = config.dropout
    self.modality_dropout = config.modality_dropout if len(modalities) > 1 else 0.0

  def __call__(self, inputs: Mapping[str, jax.Array], keys: jax.Array | None = None) -> jax.Array:
    """Per-frame traces [B, T, num_tasks] from a batch of windows.

    Args:
      inputs: at least the modalities in `config.modalities` (other keys, such as labels or
        mask, are ignored), shaped as in the data contract.

      keys: for training, one random key per window (`[B, 2]`, `jax.random.PRNGKey` form):
        dropout and modality dropout draw from them. None (evaluation, inference): no dropout.

    Raises:
      ValueError: a modality the model uses is missing, or the modalities disagree on B or T.
    """
    dropout = None if keys is None else _Dropout(self.dropout, keys)
    x = self.temporal(self._fused(inputs, {}, dropout))
    if dropout is not None:
      x = dropout(x)
    return self.heads(x, dropout)

  def stream(self, inputs: Mapping[str, jax.Array], history: jax.Array, known: jax.Array,
             num_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal only: the next n frames of a stream, each the model's last output over the window
    of W frames ending there, as in training (the GRU starts at zeros at the window's start).

    Args:
      inputs: the n frames, shaped as for `__call__` except `audio`, `[B, audio_context +
        n * 640]`: the `audio_context` samples before the frames come first (zeros before the
        stream's start). The branches see their real past, not a window's zero padding.
      history: `[B, W - 1, trunk_width]`, the fused per-frame representations of the W - 1
        frames before these (oldest first); W = `history.shape[1] + 1`, the training window.
      known: how many of the last history rows are real frames; the others precede the
        stream's start and are skipped (a frame t < W - 1 sees frames 0..t only, like frame t
        of a training window starting at the recording's start).
      num_valid: how many of the n frames are real; the rest pad a block to a fixed size.

    Returns:
      `([B, n, num_tasks], history, known)` to continue from. A recording streamed block by
      block gives the same frames whatever the blocks.
    """
    if not self.causal:
      raise ValueError('stream() needs a causal model (model.causal=True)')
    fused = self._fused(inputs, {'audio': self.branches['audio'].frames}
                        if 'audio' in self.branches else {})
    batch, n, width = fused.shape
    window = history.shape[1] + 1
    sequence = jnp.concatenate([history, fused], axis=1)  # [B, W - 1 + n, width]
    positions = jnp.arange(n)[:, None] + jnp.arange(window)[None, :]  # [n, W]
    windowed = sequence[:, positions].reshape(batch * n, window, width)
    valid = jnp.broadcast_to(positions >= window - 1 - known, (batch, n, window))
    last = self.temporal(windowed, valid.reshape(batch * n, window))[:, -1]
    outputs = self.heads(last.reshape(batch, n, width))
    history = jax.lax.dynamic_slice_in_dim(sequence, num_valid, window - 1, axis=1)
    return outputs, history, jnp.minimum(known + num_valid, window - 1)

  @property
  def audio_context(self) -> int:
    """Samples before a block that `stream` needs (0 without the raw-audio branch)."""
    return self.branches['audio'].context if 'audio' in self.branches else 0

  @property
  def trunk_width(self) -> int:
    return self.fusion.out_features

  def _fused(self, inputs: Mapping[str, jax.Array], branch_calls, dropout=None) -> jax.Array:
    """Per-frame fused representation [B, T, trunk_width] (branch_calls: modality -> the
    function to use instead of the branch's own call; dropout: a `_Dropout` while training)."""
    missing = [m for m in self.modalities if m not in inputs]
    if missing:
      raise ValueError(
          f'inputs lack modalities {missing} that the model uses; got keys {sorted(inputs)}')
    embeddings = {m: branch_calls.get(m, self.branches[m])(inputs[m]) for m in self.modalities}
    shapes = {m: e.shape[:2] for m, e in embeddings.items()}
    if len(set(shapes.values())) != 1:
      raise ValueError(f'modalities disagree on (batch, label frames): {shapes}')
    parts = [embeddings[m] for m in self.modalities]
    if dropout is not None:
      parts = [dropout(part) for part in parts]
      modality_keys = dropout.next_keys()
      if self.modality_dropout:
        parts = _modality_dropout(parts, self.modality_dropout, modality_keys)
    x = jax.nn.gelu(self.fusion_norm(self.fusion(jnp.concatenate(parts, axis=-1))))
    return x if dropout is None else dropout(x)
