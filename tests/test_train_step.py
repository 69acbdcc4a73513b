"""The train step: shard_map, pmap and one device agree; vectorised seeds equal seeds trained alone."""

import jax
import numpy as np
import pytest

from ccc_jax import sharding
from ccc_jax import train
from ccc_jax.config import AugmentConfig, ModelInfo
from launch import cli
from launch.configs import synthetic

WINDOW = 8
INFO = ModelInfo(
    tasks=('activation', 'valence', 'dominance'),
    input_dims={'audio': 640, 'logmel': 40, 'mocap': 12}, stats={}, window=WINDOW, hop=4,
    sample_rate=16000, label_rate=25, dataset='test')


def _config(seeds=(0,)):
  config = synthetic.get_config('tiny')
  config.seeds = seeds
  config.num_steps = 10
  config.optimizer.warmup_steps = 2
  # The collectives are what is tested, not the model: the smallest model with every branch.
  config.model.audio_channels = (4, 8)
  config.model.audio_kernel_sizes = (40, 32)
  config.model.audio_strides = (40, 16)
  config.model.tcn_dilations = (1,)
  # With every random draw on: what must not depend on the devices or the stack is tested too.
  config.model.dropout = 0.2
  config.model.modality_dropout = 0.3
  config.augment.gain_db = 6.0
  config.augment.noise_snr_db = (5.0, 20.0)
  config.augment.shift_ms = 5.0
  return cli.run_config(config)


def _batches(seed: int, steps: int = 3, batch: int = 8):
  """Global batches `[1, batch, ...]` (one seed axis) of random inputs and correlated labels."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    labels = rng.normal(size=(batch, WINDOW, 3)).astype(np.float32)
    out.append({
        'audio': rng.normal(size=(1, batch, WINDOW * 640)).astype(np.float32),
        'logmel': (rng.normal(size=(1, batch, WINDOW * 4, 40))
                   + np.repeat(labels[..., :1], 4, axis=1)[None]).astype(np.float32),
        'mocap': (rng.normal(size=(1, batch, WINDOW, 12))
                  + np.tile(labels, 4)[None]).astype(np.float32),
        'labels': labels[None],
        'mask': (rng.random((1, batch, WINDOW)) > 0.1).astype(np.float32),
    })
  return out


def _train(config, devices, mode, batches):
  graphdef, state = train.create_state(config, INFO)
  optimizer = train.make_optimizer(config.optimizer, config.num_steps)
  parallel = sharding.DataParallel(sharding.make_mesh(devices), mode)
  step = parallel.run(train.make_per_device_step(graphdef, optimizer, config.loss, None,
                                                 config.augment), batch_axis=1)
  state = parallel.put_state(state)
  losses = []
  for batch in batches:
    batch = train.identify_examples(batch, config.seeds)
    state, metrics = step(state, parallel.put_batch(batch, axis=1))
    losses.append(np.asarray(metrics['loss']).reshape(-1)[:len(config.seeds)])
  return jax.device_get(parallel.get_state(state)), np.stack(losses)


@pytest.fixture(scope='module')
def one_device_run():
  return _train(_config(), jax.devices()[:1], 'shard_map', _batches(0))


@pytest.mark.parametrize('mode', sharding.PARALLEL_MODES)
def test_eight_devices_match_one_device(one_device_run, mode):
  assert jax.device_count() == 8
  reference_state, reference_losses = one_device_run
  state, losses = _train(_config(), jax.devices(), mode, _batches(0))
  np.testing.assert_allclose(losses, reference_losses, rtol=2e-5)
  assert int(np.asarray(state.step)[0]) == 3
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference_state.params)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
  # Training moved the parameters (the comparison above is not between two initialisations).
  initial = train.init_params(_config().model, INFO, (0,))[1]
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(state.params), jax.tree.leaves(initial)))
  assert moved > 1e-3


def test_vectorised_seeds_equal_seeds_trained_alone():
  together_batches = [
      {k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(_batches(0), _batches(1))]
  # One device (the devices are the other test's subject): seed 1 alone is then the program of
  # `one_device_run`, which the compilation cache holds once the tests above ran.
  together, together_losses = _train(_config(seeds=(0, 1)), jax.devices()[:1], 'shard_map',
                                     together_batches)
  alone, alone_losses = _train(_config(seeds=(1,)), jax.devices()[:1], 'shard_map', _batches(1))
  np.testing.assert_allclose(together_losses[:, 1], alone_losses[:, 0], rtol=2e-5)
  for got, want in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(got[1], want[0], rtol=2e-4, atol=2e-6)
  # And the two seeds really are different models.
  first = jax.tree.leaves(together.params)[0]
  assert not np.allclose(first[0], first[1])


def test_unknown_loss_and_parallel_mode_are_refused():
  with pytest.raises(ValueError, match="loss must be one of ccc, pcc, mse; got 'l1'"):
    _config().replace(loss='l1')
  with pytest.raises(ValueError, match="parallel must be one of shard_map, pmap; got 'pjit'"):
    _config().replace(parallel='pjit')
  with pytest.raises(ValueError, match="unknown parallel mode 'pjit'"):
    sharding.DataParallel(sharding.make_mesh(), 'pjit')


def test_waveform_augmentation_draws_gain_noise_and_shift_per_window():
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(np.arange(256))
  wave = np.tile(np.sin(2 * np.pi * np.arange(1600) / 100.0), (256, 1)).astype(np.float32)
  gain_only = np.asarray(train.augment_audio(wave, keys, AugmentConfig(gain_db=6.0)))
  ratio_db = 20 * np.log10(np.abs(gain_only).max(axis=1) / np.abs(wave).max(axis=1))
  assert ratio_db.min() >= -6.0001 and ratio_db.max() <= 6.0001 and ratio_db.std() > 2.5
  noisy = np.asarray(train.augment_audio(wave, keys, AugmentConfig(noise_snr_db=(10.0, 20.0))))
  snr_db = 10 * np.log10(np.mean(wave ** 2, axis=1) / np.mean((noisy - wave) ** 2, axis=1))
  assert snr_db.min() > 9.5 and snr_db.max() < 20.5 and snr_db.std() > 2
  shifted = np.asarray(train.augment_audio(wave, keys, AugmentConfig(shift_ms=2.0)))
  lags = [int(np.argmax([np.dot(np.roll(wave[0], s), shifted[i]) for s in range(-32, 33)])) - 32
          for i in range(16)]
  assert max(abs(lag) for lag in lags) <= 32 and len(set(lags)) > 3
  # The same keys, the same draws; the neutral config leaves the waveform alone.
  np.testing.assert_array_equal(
      noisy, np.asarray(train.augment_audio(wave, keys, AugmentConfig(noise_snr_db=(10.0, 20.0)))))
  np.testing.assert_array_equal(np.asarray(train.augment_audio(wave, keys, AugmentConfig())), wave)
