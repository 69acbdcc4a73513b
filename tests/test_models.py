"""Tests for ccc_jax.models: shapes, branch wiring, refusals and the functional (split/merge) use.

Compiles are the cost, so models use a narrow config, B=2, T=8, and compiled functions are
shared through module-scoped caches; shape-only checks use `jax.eval_shape` (traces, no compile).
"""

from __future__ import annotations

import functools
import itertools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ccc_jax import models
from ccc_jax.config import MODALITIES, TEMPORAL_MODELS, ModelConfig

INPUT_DIMS = {'audio': 640, 'logmel': 40, 'egemaps': 25, 'egemaps_functionals': 5, 'mocap': 6}
BATCH, WINDOW = 2, 8
ALL_MODALITIES = MODALITIES


def small_config(modalities=ALL_MODALITIES, temporal='tcn', **changes):
  return ModelConfig(**{
      'modalities': tuple(modalities), 'temporal': temporal,
      'audio_channels': (4, 4, 4, 8),  # same strides as the default: 640 samples per frame
      'logmel_width': 8, 'egemaps_width': 8, 'functionals_width': 8, 'mocap_width': 8,
      'trunk_width': 8,
      'tcn_dilations': (1, 2, 4),  # receptive field 15 frames > WINDOW: every frame sees all
      'gru_hidden': 8, 'head_hidden': 4, **changes})


def make_inputs(seed=0, batch=BATCH, window=WINDOW):
  keys = jax.random.split(jax.random.key(seed), 5)
  return {
      'audio': jax.random.normal(keys[0], (batch, window * 640)),
      'logmel': jax.random.normal(keys[1], (batch, window * 4, INPUT_DIMS['logmel'])),
      'egemaps': jax.random.normal(keys[2], (batch, window * 4, INPUT_DIMS['egemaps'])),
      'egemaps_functionals': jax.random.normal(
          keys[3], (batch, window, INPUT_DIMS['egemaps_functionals'])),
      'mocap': jax.random.normal(keys[4], (batch, window, INPUT_DIMS['mocap'])),
  }


@functools.cache
def built(modalities=ALL_MODALITIES, temporal='tcn', num_tasks=3, seed=0):
  """(model, graphdef, params, jitted apply(params, inputs)), built once per setting."""
  model = models.AVDNet(small_config(modalities, temporal), num_tasks=num_tasks,
                        input_dims=INPUT_DIMS, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  apply = jax.jit(lambda params, inputs: nnx.merge(graphdef, params)(inputs))
  return model, graphdef, params, apply


@pytest.fixture(scope='module')
def inputs():
  return make_inputs()


def test_default_config():
  config = ModelConfig()
  assert config.modalities == ('audio', 'logmel', 'mocap')
  assert config.temporal == 'gru'
  assert np.prod(config.audio_strides) == 640


@pytest.mark.parametrize('temporal', TEMPORAL_MODELS)
def test_output_shape_mtl(inputs, temporal):
  *_, params, apply = built(temporal=temporal)
  outputs = apply(params, inputs)
  assert outputs.shape == (BATCH, WINDOW, 3)
  assert outputs.dtype == jnp.float32
  assert np.all(np.isfinite(outputs))


@pytest.mark.parametrize('temporal', TEMPORAL_MODELS)
def test_output_shape_stl(inputs, temporal):
  # Same network with one head; traced, not compiled (the MTL test runs the compiled program).
  *_, params, apply = built(temporal=temporal, num_tasks=1)
  assert jax.eval_shape(apply, params, inputs).shape == (BATCH, WINDOW, 1)


@pytest.mark.parametrize('modalities', [
    combo for n in (1, 2, 3) for combo in itertools.combinations(ALL_MODALITIES, n)])
def test_every_modality_combination_builds(modalities):
  model = models.AVDNet(small_config(modalities), num_tasks=3, input_dims=INPUT_DIMS,
                        rngs=nnx.Rngs(0))
  assert tuple(model.branches.keys()) == modalities
  # Only the modalities the model uses are needed at call time.
  only_used = {m: x for m, x in make_inputs().items() if m in modalities}
  assert jax.eval_shape(model, only_used).shape == (BATCH, WINDOW, 3)


@pytest.mark.parametrize('window', [1, 5, 100])
def test_any_window_length(window):
  model, *_ = built()
  shapes = jax.eval_shape(functools.partial(make_inputs, window=window))
  assert jax.eval_shape(model, shapes).shape == (BATCH, window, 3)


@pytest.mark.parametrize('modality', ALL_MODALITIES)
def test_each_branch_influences_output_and_absent_branch_does_not(inputs, modality):
  perturbed = dict(inputs)
  perturbed[modality] = inputs[modality] + 1.0

  *_, params, apply = built()
  assert not np.allclose(apply(params, inputs), apply(params, perturbed))

  without = tuple(m for m in ALL_MODALITIES if m != modality)
  *_, params, apply = built(modalities=without)
  np.testing.assert_array_equal(apply(params, inputs), apply(params, perturbed))


@pytest.mark.parametrize('temporal', TEMPORAL_MODELS)
def test_temporal_model_is_non_causal(inputs, temporal):
  # Mocap enters per frame, so only the temporal model can carry the last frame to the first
  # (backward direction / future context) and the first frame to the last (forward direction).
  *_, params, apply = built(temporal=temporal)
  outputs = apply(params, inputs)
  for frame, seen_at in ((WINDOW - 1, 0), (0, WINDOW - 1)):
    perturbed = dict(inputs)
    perturbed['mocap'] = inputs['mocap'].at[:, frame].add(1.0)
    assert not np.allclose(outputs[:, seen_at], apply(params, perturbed)[:, seen_at])


def test_bidirectional_gru_matches_step_by_step_reference():
  layer = models.BidirectionalGRULayer(width=3, hidden=4, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (2, 5, 3))
  gates_x = np.asarray(layer.input_proj(x)).reshape(2, 5, 2, 12)
  kernel, bias = np.asarray(layer.recurrent_kernel[...]), np.asarray(layer.recurrent_bias[...])
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  states = np.zeros((2, 5, 2, 4))  # [B, T, direction, H]
  for direction, order in ((0, range(5)), (1, reversed(range(5)))):
    h = np.zeros((2, 4))
    for t in order:
      x_r, x_z, x_n = np.split(gates_x[:, t, direction], 3, axis=-1)
      h_r, h_z, h_n = np.split(h @ kernel[direction] + bias[direction], 3, axis=-1)
      r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
      h = (1 - z) * np.tanh(x_n + r * h_n) + z * h
      states[:, t, direction] = h
  expected = layer.norm(x + layer.out(jnp.asarray(states.reshape(2, 5, 8))))
  np.testing.assert_allclose(jax.jit(lambda x: layer(x))(x), expected, rtol=1e-5, atol=1e-5)


def test_gru_layer_gradients_equal_those_of_the_rolled_scan():
  # Undifferentiated the scan is unrolled; differentiated it is the rolled scan. Both must be
  # the plain `lax.scan` of the same step: outputs and gradients equal bit for bit.
  layer = models.BidirectionalGRULayer(width=3, hidden=4, rngs=nnx.Rngs(1))
  params = (layer.recurrent_kernel[...], layer.recurrent_bias[...][:, None, :])
  gates_x = jax.random.normal(jax.random.key(2), (4, 2, 5, 12))
  h0 = jnp.zeros((2, 5, 4))
  step = functools.partial(models._bidirectional_gru_step, dtype=jnp.float32)  # pylint: disable=protected-access

  def rolled(params, gates_x):
    return jax.lax.scan(functools.partial(step, params), h0, gates_x)[1]

  def ours(params, gates_x):
    return models._scan(step, params, h0, gates_x)[1]  # pylint: disable=protected-access

  cotangent = jax.random.normal(jax.random.key(3), (4, 2, 5, 4))

  @jax.jit
  def outputs_and_grads(params, gates_x):
    return [(f(params, gates_x),
             jax.grad(lambda p, g, f=f: jnp.sum(f(p, g) * cotangent), argnums=(0, 1))(
                 params, gates_x)) for f in (ours, rolled)]

  got, expected = outputs_and_grads(params, gates_x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


# (in channels, out channels, kernel size, stride, input length, padding)
STRIDED_CONV_CASES = (
    (1, 4, 20, 10, 640, 'SAME'),   # the default first layer's shape, shorter
    (2, 3, 40, 40, 120, 'SAME'),   # one block per output (the tiny test config)
    (1, 4, 20, 10, 650, 'VALID'),  # causal: left context, VALID
    (3, 5, 7, 3, 37, 'SAME'),      # kernel not a multiple of the stride (zero taps), odd length
)


def test_strided_conv_matches_flax_conv():
  """Outputs undifferentiated, outputs differentiated and gradients, against `nnx.Conv` (every
  case in one compiled program)."""
  models_and_inputs = []
  for case, (c_in, c_out, kernel_size, stride, length, padding) in enumerate(STRIDED_CONV_CASES):
    kwargs = dict(kernel_size=kernel_size, strides=stride, padding=padding)
    models_and_inputs.append((
        [nnx.split(conv(c_in, c_out, **kwargs, rngs=nnx.Rngs(case)))
         for conv in (models.StridedConv, nnx.Conv)],
        jax.random.normal(jax.random.key(case), (2, length, c_in))))
  graphdefs = [[graphdef for graphdef, _ in convs] for convs, _ in models_and_inputs]
  params = [[conv_params for _, conv_params in convs] for convs, _ in models_and_inputs]
  inputs = [x for _, x in models_and_inputs]

  @jax.jit
  def outputs_and_grads(params, inputs):
    results = []
    for case_graphdefs, case_params, x in zip(graphdefs, params, inputs):
      for graphdef, conv_params in zip(case_graphdefs, case_params):
        apply = lambda p, x, g=graphdef: nnx.merge(g, p)(x)
        outputs, pullback = jax.vjp(apply, conv_params, x)
        cotangent = jax.random.normal(jax.random.key(2), outputs.shape)
        results.append((apply(conv_params, x), outputs, pullback(cotangent)))
    return results

  results = outputs_and_grads(params, inputs)
  for case, (c_in, c_out, kernel_size, stride, length, padding) in enumerate(STRIDED_CONV_CASES):
    (outputs, vjp_outputs, grads), (expected, expected_vjp, expected_grads) = (
        results[2 * case:2 * case + 2])
    message = f'case {STRIDED_CONV_CASES[case]}'
    np.testing.assert_array_equal(outputs, expected, err_msg=message)  # the same call
    tolerance = 0 if kernel_size % stride == 0 else 1e-6  # else zero taps reorder the sums
    np.testing.assert_allclose(vjp_outputs, expected_vjp, rtol=tolerance, atol=tolerance,
                               err_msg=message)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=message)


def test_fused_heads_match_per_task_heads():
  heads = models.MultiTaskHeads(width=5, hidden=4, num_tasks=3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 6, 5))
  fused = jax.jit(lambda x: heads(x))(x)  # one compile instead of op-by-op dispatch
  for task in range(3):
    hidden = jax.nn.gelu(x @ heads.hidden_kernel[task] + heads.hidden_bias[task])
    alone = hidden @ heads.output_kernel[task] + heads.output_bias[task]
    np.testing.assert_allclose(fused[..., task], alone, rtol=1e-5, atol=1e-6)


def test_missing_modality_refused_at_construction():
  with pytest.raises(ValueError, match=r"'mocap'.*\['audio', 'logmel'\]"):
    models.AVDNet(small_config(('audio', 'logmel', 'mocap')), num_tasks=3,
                  input_dims={'audio': 640, 'logmel': 40}, rngs=nnx.Rngs(0))


def test_missing_modality_refused_at_call(inputs):
  model, *_ = built()
  without_logmel = {m: x for m, x in inputs.items() if m != 'logmel'}
  with pytest.raises(ValueError, match='logmel'):
    model(without_logmel)


def test_inconsistent_windows_refused():
  model, *_ = built()
  shapes = jax.eval_shape(make_inputs)
  shapes['mocap'] = jax.ShapeDtypeStruct((BATCH, WINDOW + 1, INPUT_DIMS['mocap']), jnp.float32)
  with pytest.raises(ValueError, match='disagree'):
    jax.eval_shape(model, shapes)


@pytest.mark.parametrize('modality, shape, message', [
    ('egemaps', (BATCH, WINDOW * 4, 24), r'egemaps must be \[B, T\*4, 25\]'),
    ('egemaps', (BATCH, WINDOW * 4 + 1, 25), r'egemaps must be \[B, T\*4, 25\]'),
    ('egemaps_functionals', (BATCH, WINDOW, 6), r'egemaps_functionals must be \[B, T, 5\]'),
])
def test_frame_branches_name_a_wrong_input_shape(modality, shape, message):
  model, *_ = built()
  shapes = jax.eval_shape(make_inputs)
  shapes[modality] = jax.ShapeDtypeStruct(shape, jnp.float32)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model, shapes)


@pytest.mark.parametrize('overrides, message', [
    ({'modalities': ('audio', 'video')}, 'video'),
    ({'modalities': ()}, 'empty'),
    ({'temporal': 'lstm'}, 'lstm'),
    ({'audio_strides': (10, 4, 4, 2)}, 'audio_strides'),
    ({'compute_dtype': 'float16'}, 'compute_dtype'),
])
def test_invalid_config_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    config = small_config(**overrides)
    models.AVDNet(config, num_tasks=3, input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))


def test_only_params_and_deterministic_init():
  model, _, params, _ = built()
  assert not jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))
  _, same_seed = nnx.split(models.AVDNet(small_config(), num_tasks=3, input_dims=INPUT_DIMS,
                                         rngs=nnx.Rngs(0)), nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, params, same_seed)
  _, _, other_seed, _ = built(seed=1)
  assert not np.allclose(params['heads']['hidden_kernel'][...],
                         other_seed['heads']['hidden_kernel'][...])


def test_merge_inside_jit_matches_eager_and_leaves_params_unchanged(inputs):
  # GRU: its scan carry is the only place a forward pass could keep state.
  model, _, params, apply = built(temporal='gru')
  before = jax.tree.map(np.array, params)
  np.testing.assert_allclose(apply(params, inputs), model(inputs), rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model, nnx.Param))


def test_vmap_over_stacked_params_matches_each_seed(inputs):
  _, graphdef, params_a, apply = built(seed=0)
  _, _, params_b, _ = built(seed=1)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params_a, params_b)
  both = jax.jit(jax.vmap(lambda params, inputs: nnx.merge(graphdef, params)(inputs),
                          in_axes=(0, None)))(stacked, inputs)
  np.testing.assert_allclose(both[0], apply(params_a, inputs), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(both[1], apply(params_b, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('temporal', TEMPORAL_MODELS)
def test_gradients_finite_and_reach_every_param(inputs, temporal):
  _, graphdef, params, _ = built(temporal=temporal)

  @jax.jit
  def grad(params):
    return jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(inputs) ** 2))(params)

  for path, g in jax.tree_util.tree_leaves_with_path(grad(params)):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


def test_bfloat16_compute_keeps_float32_params_outputs_and_gradients(inputs):
  # Same seed: the same float32 parameters (names, shapes, values), so checkpoints and the
  # optimiser do not depend on the compute dtype; outputs near float32's, float32 themselves.
  # Compiled with the TCN (the GRU's scan compiles several times slower); the GRU models are
  # traced only, for their output dtype.
  _, graphdef, params, apply = built()
  model = models.AVDNet(small_config(compute_dtype='bfloat16'), num_tasks=3,
                        input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
  graphdef_bf16, params_bf16 = nnx.split(model, nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, params, params_bf16)

  def objective(p):
    outputs = nnx.merge(graphdef_bf16, p)(inputs)
    return jnp.mean(outputs ** 2), outputs
  (_, outputs), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params_bf16)
  assert outputs.dtype == jnp.float32
  reference = apply(params, inputs)
  assert not np.array_equal(outputs, reference)  # really computed in bfloat16
  np.testing.assert_allclose(outputs, reference, atol=0.05 * float(jnp.max(jnp.abs(reference))))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert g.dtype == jnp.float32 and np.all(np.isfinite(g)), path
  for variant in ({'temporal': 'gru'}, {'causal': True, 'temporal': 'gru',
                                        'modalities': ('audio', 'logmel', 'mocap')}):
    other = models.AVDNet(small_config(compute_dtype='bfloat16', **variant), num_tasks=3,
                          input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
    assert jax.eval_shape(other, inputs).dtype == jnp.float32, variant


def test_data_parallel_shard_map_matches_one_device():
  # GRU: scan needs its zero initial carry typed as varying over the mesh axis like the data.
  # One example per device (conftest provides 8 CPU devices), params replicated.
  _, graphdef, params, apply = built(temporal='gru')
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  spec = jax.sharding.PartitionSpec
  sharded_apply = jax.jit(jax.shard_map(
      lambda params, inputs: nnx.merge(graphdef, params)(inputs),
      mesh=mesh, in_specs=(spec(), spec('data')), out_specs=spec('data')))
  inputs = make_inputs(batch=len(jax.devices()))
  np.testing.assert_allclose(sharded_apply(params, inputs), apply(params, inputs),
                             rtol=1e-5, atol=1e-6)


def test_dropout_draws_only_from_the_window_keys():
  """Training (keys given): masks follow each window's key, whatever its batch neighbours;
  evaluation (no keys): deterministic and undisturbed. Modality dropout never drops every
  modality of a window."""
  config = small_config(('logmel', 'mocap'), dropout=0.3, modality_dropout=0.9)
  model = models.AVDNet(config, num_tasks=3, input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  apply = jax.jit(lambda p, x, k: nnx.merge(graphdef, p)(x, k))
  evaluate = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  x = {k: v for k, v in make_inputs(batch=4).items() if k in ('logmel', 'mocap')}
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(4))
  trained = np.asarray(apply(params, x, keys))
  # The windows in another order, each with its own key: each window's output is unchanged
  # (its masks follow its key, not its place in the batch).
  order = np.array([2, 0, 3, 1])
  shuffled = np.asarray(apply(params, {k: v[order] for k, v in x.items()}, keys[order]))
  np.testing.assert_allclose(shuffled, trained[order], rtol=1e-5, atol=1e-6)
  assert not np.allclose(trained, np.asarray(evaluate(params, x)), atol=1e-3)
  other = np.asarray(apply(params, x, keys[::-1]))
  assert not np.allclose(other, trained, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(evaluate(params, x)), np.asarray(evaluate(params, x)))
  embeddings = [jnp.ones((64, 1, 2)), 2 * jnp.ones((64, 1, 2))]
  window_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(jnp.arange(64))
  kept = [np.asarray(e) for e in jax.jit(models._modality_dropout, static_argnums=1)(  # pylint: disable=protected-access
      embeddings, 0.9, window_keys)]
  alive = np.stack([e[:, 0, 0] != 0 for e in kept], axis=1)
  assert alive.any(axis=1).all() and not alive.all()
  # Kept modalities are scaled by 2 / (number kept).
  for window in range(64):
    scale = 2 / alive[window].sum()
    for m in range(2):
      expected = (m + 1) * scale if alive[window, m] else 0.0
      assert float(kept[m][window, 0, 0]) == pytest.approx(expected)
