"""Device-resident training data: the same batches as the host pipeline, bit for bit; the choice
of placement. (Training runs on either path, and resuming across them: tests/test_train.py.)"""

import grain
import jax
import numpy as np
import pytest

from ccc_jax import input_pipeline
from ccc_jax import sharding
from ccc_jax import train
from conftest import tiny_config


@pytest.fixture(scope='module')
def corpus(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  return input_pipeline.open_corpus(config.dataset, config.data_dir)


def test_window_order_is_the_pipelines_for_any_process_count(corpus):
  """`WindowOrder` against grain's own construction of `train_dataset`'s batches over the
  window numbers (shuffle, repeat, batch per process, every P-th batch from p): 36 windows in
  global batches of 8, 6 of them, cross into the second epoch. (grain's index shuffle takes
  milliseconds a window over so few windows: the test stays short.)"""
  def reference(p, count, seed):
    return (grain.MapDataset.range(36).shuffle(seed=seed).repeat()
            .batch(8 // count, drop_remainder=True)[p::count])
  assert len(corpus.source('train')) == 36
  seed = 3
  for count in (1, 2):
    for p in range(count):
      order = input_pipeline.WindowOrder(corpus, global_batch=8, seed=seed, process_index=p,
                                         process_count=count)
      expected = reference(p, count, seed)
      for step in range(6):
        got = order.batch(step)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected[step], err_msg=f'{p}/{count} {step}')
  order = input_pipeline.WindowOrder(corpus, global_batch=8, seed=seed)
  whole = np.concatenate([order.batch(j) for j in range(9)])
  for epoch in range(2):  # each epoch a permutation of the windows, each another
    assert sorted(whole[36 * epoch:36 * (epoch + 1)]) == list(range(36))
  assert not np.array_equal(whole[:36], whole[36:72])


@pytest.mark.parametrize('mode', sharding.PARALLEL_MODES)
def test_device_batches_are_the_host_batches_bit_for_bit(tiny_data_dir, corpus, mode):
  """Two seeds (two orders) on 8 devices, 6 global batches (into the second epoch): every array of
  the gathered batch equals the host pipeline's, as placed on the devices."""
  config = tiny_config(tiny_data_dir, seeds=(0, 3), parallel=mode)
  parallel = sharding.DataParallel(sharding.make_mesh(), mode)
  assert parallel.num_devices == 8
  host = train._HostFeed(config, corpus, parallel, 0)  # pylint: disable=protected-access
  device = train._DeviceFeed(config, corpus, parallel, 0)  # pylint: disable=protected-access
  for step in range(6):
    expected, got = jax.device_get(host.batch(step)), jax.device_get(device.batch(step))
    assert sorted(got) == sorted(expected) == sorted(
        list(config.model.modalities) + ['labels', 'mask', 'seed', 'example'])
    for name in expected:
      assert got[name].dtype == expected[name].dtype, name
      np.testing.assert_array_equal(got[name], expected[name], err_msg=f'{name}, step {step}')
  # A checkpoint of either path holds the same position: the host path resumes from either.
  assert device.data_state(6) == host.data_state(6)


def test_auto_placement_takes_the_devices_when_the_split_fits_the_budget(tiny_data_dir, corpus):
  devices = jax.devices()
  budget = (1000, 'test memory')
  assert sharding.choose_data_placement('auto', 1000, devices, budget).kind == 'device'
  assert sharding.choose_data_placement('auto', 1001, devices, budget).kind == 'host'
  forced = sharding.choose_data_placement('device', 1001, devices, budget)
  assert forced.kind == 'device'
  assert forced.describe() == (
      'training data on the devices (uploaded once, batches gathered there): '
      'data_placement=device, train split 1.0 KB per copy > budget 1.0 KB (25% of test memory)')
  assert sharding.choose_data_placement('host', 1, devices, budget).kind == 'host'
  # On the CPU backend: a quarter of the host's memory over the 8 devices' copies.
  budget_bytes, memory = sharding.resident_budget(devices)
  assert memory.startswith('host memory') and memory.endswith('over 8 CPU device(s)')
  assert 0 < budget_bytes < sharding._host_memory_bytes() / 8  # pylint: disable=protected-access
  # The split's size without reading it: what `read_train_split` holds.
  config = tiny_config(tiny_data_dir)
  split = input_pipeline.read_train_split(corpus, config.tasks, config.model.modalities)
  assert input_pipeline.train_split_bytes(corpus, config.tasks, config.model.modalities) == sum(
      value.nbytes for value in split.values())
  assert split['audio'].dtype == np.int16 and split['labels'].shape[-1] == len(config.tasks)
