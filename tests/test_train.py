"""The trainer end to end on the tiny synthetic corpus: outputs, resume, early stopping, NaN, the
GRU. The runs in other processes (SIGKILL, two processes) are in test_train_processes.py."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from ccc_jax import checkpoints
from ccc_jax import errors
from ccc_jax import inference
from ccc_jax import input_pipeline
from ccc_jax import train
from conftest import assert_same_params, restored_params, tiny_config
from datasets.synthetic_avd import simulation


def test_run_writes_metrics_checkpoints_and_a_dev_table(tiny_workdir):
  summary = json.loads((tiny_workdir / 'summary.json').read_text())
  assert summary['step'] == 20
  for task in ('activation', 'valence', 'dominance', 'mean'):
    assert np.isfinite(summary['dev'][task]['ccc_concat'])
    assert np.isfinite(summary['dev'][task]['ccc_seq_mean'])
  records = [json.loads(line) for line in (tiny_workdir / 'metrics.jsonl').read_text().splitlines()]
  assert {r['kind'] for r in records} == {'train', 'dev'}
  assert [r['step'] for r in records if r['kind'] == 'dev'] == [10, 20]
  assert all(np.isfinite(r['loss']) for r in records if r['kind'] == 'train')
  assert list((tiny_workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert sorted(os.listdir(tiny_workdir / 'checkpoints' / 'latest')) == ['20']
  best_step = int(os.listdir(tiny_workdir / 'checkpoints' / 'best')[0])
  _, best = restored_params(tiny_workdir, 'best')
  assert best.step == best_step
  assert best.tasks == ('activation', 'valence', 'dominance')
  best_info = checkpoints.Checkpoints(str(tiny_workdir)).best_run_info()
  assert best_info['dev_ccc'] == pytest.approx(summary['best_dev_ccc'])
  assert summary['best_step'] == best_step == best_info['step']
  assert summary['best_dev']['mean']['ccc_concat'] == pytest.approx(summary['best_dev_ccc'])
  assert 0 < summary['seconds_to_best'] <= summary['train_seconds']
  assert summary['stopped_early'] is False
  # 'auto': the tiny split (13 MB for 8 CPU devices) is on the devices in every run here
  # except where a test asks for the host pipeline.
  assert summary['data_placement'] == 'device'


def test_restored_model_reproduces_the_dev_scores(tiny_workdir, tiny_data_dir):
  restored = checkpoints.restore_model(str(tiny_workdir), 'latest')
  config = tiny_config(tiny_data_dir)
  corpus = input_pipeline.open_corpus(config.dataset, config.data_dir)
  table = train.evaluate_dev(config, restored.graphdef, restored.params, corpus, config.tasks)
  summary = json.loads((tiny_workdir / 'summary.json').read_text())
  for task in config.tasks:
    assert table[task]['ccc_concat'] == pytest.approx(summary['dev'][task]['ccc_concat'],
                                                      abs=1e-6)


def test_resume_continues_and_refuses_another_config(tiny_workdir, tiny_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_workdir, workdir)
  with pytest.raises(errors.CheckpointError, match="loss: 'ccc' -> 'mse'"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, loss='mse'), str(workdir))
  # A change deep in the config is named by its leaf, and only that leaf.
  model = dataclasses.replace(tiny_config(tiny_data_dir).model, head_hidden=4)
  with pytest.raises(errors.CheckpointError, match=r"config \(model.head_hidden: 8 -> 4\);"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, model=model), str(workdir))
  # The prepared dataset moved: the same data (same statistics) under another path resumes.
  moved = tmp_path / 'moved_data'
  shutil.copytree(tiny_data_dir, moved)
  # A finished run started again trains nothing and reports the same dev table.
  again = train.train_and_evaluate(tiny_config(moved), str(workdir))
  assert again['step'] == 20 and again['compile_seconds'] is None
  finished = json.loads((tiny_workdir / 'summary.json').read_text())
  assert again['dev']['mean']['ccc_concat'] == pytest.approx(finished['dev']['mean']['ccc_concat'],
                                                             abs=1e-6)
  # num_steps sets the schedule: changing it on resume is refused, with the reason.
  with pytest.raises(errors.CheckpointError, match='num_steps: 20 -> 25.*decay_steps'):
    train.train_and_evaluate(tiny_config(tiny_data_dir, num_steps=25), str(workdir))


def test_with_a_fixed_schedule_a_run_is_extended_exactly(tiny_workdir, tiny_data_dir, tmp_path):
  """Planned for 10 steps with `optimizer.decay_steps` = 20, then resumed with num_steps = 20:
  the parameters of the session's run planned for 20 steps (the same schedule). The first 10
  steps read the host pipeline, the last 10 the device-resident split, as the session's run
  did: the same batches, so the same parameters, and a resume across the two paths."""
  base = tiny_config(tiny_data_dir)
  fixed = dataclasses.replace(base.optimizer, decay_steps=20)
  workdir = str(tmp_path / 'extended')
  first = train.train_and_evaluate(
      base.replace(num_steps=10, optimizer=fixed, data_placement='host'), workdir)
  assert (first['step'], first['data_placement']) == (10, 'host')
  second = train.train_and_evaluate(base.replace(num_steps=20, optimizer=fixed), workdir)
  assert (second['step'], second['data_placement']) == (20, 'device')
  assert_same_params(restored_params(workdir)[0], restored_params(tiny_workdir)[0], exact=True)


def test_early_stopping_keeps_the_best_and_a_resume_stops_there_too(tiny_data_dir, tmp_path,
                                                                    monkeypatch):
  """Scripted dev scores (evaluations every 5 steps): best at step 10, none better at 15, so with
  patience 1 training ends at 15 of 20; run again it trains nothing; with patience 3 it goes on."""
  scores = iter([0.5, 0.6, 0.55,  # steps 5, 10, 15: stop
                 0.55,  # the finished run's report when started again
                 0.65])  # step 20, after the patience was raised
  monkeypatch.setattr(train, 'evaluate_dev', lambda *args: {'mean': {'ccc_concat': next(scores)},
                                                            'seeds': []})
  config = tiny_config(tiny_data_dir, eval_every=5, patience=1)
  workdir = str(tmp_path / 'early')
  summary = train.train_and_evaluate(config, workdir)
  assert (summary['step'], summary['best_step'], summary['stopped_early']) == (15, 10, True)
  assert summary['best_dev_ccc'] == 0.6 and 0 < summary['seconds_to_best'] < summary['train_seconds']
  assert os.listdir(os.path.join(workdir, 'checkpoints', 'best')) == ['10']
  again = train.train_and_evaluate(config, workdir)
  assert (again['step'], again['stopped_early'], again['compile_seconds']) == (15, True, None)
  assert again['seconds_to_best'] == pytest.approx(summary['seconds_to_best'])
  longer = train.train_and_evaluate(config.replace(patience=3), workdir)
  assert (longer['step'], longer['best_step'], longer['stopped_early']) == (20, 20, False)
  # The time to the new best counts the first process's training too (steps 1-15).
  assert longer['seconds_to_best'] > summary['seconds_to_best']
  assert longer['train_seconds'] > longer['seconds_to_best']


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tiny_data_dir, tmp_path, monkeypatch):
  calls = {'n': 0}
  original = input_pipeline.SeedIterators.__next__

  def poisoned(self):
    batch = original(self)
    calls['n'] += 1
    if calls['n'] == 13:  # the batch of step 13
      batch['labels'] = np.full_like(batch['labels'], np.nan)
    return batch

  monkeypatch.setattr(input_pipeline.SeedIterators, '__next__', poisoned)
  workdir = tmp_path / 'nan'
  with pytest.raises(errors.TrainingDiverged, match='at step 13'):
    train.train_and_evaluate(tiny_config(tiny_data_dir, data_placement='host'), str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == ['10']
  params, restored = restored_params(workdir)
  assert restored.step == 10
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_default_gru_model_trains_restores_and_predicts(tiny_data_dir, tmp_path):
  """The default temporal model (the bidirectional GRU) through the whole trainer, at tiny width."""
  base = tiny_config(tiny_data_dir)
  config = base.replace(num_steps=4, eval_every=2, checkpoint_every=2, log_every=2,
                        model=dataclasses.replace(base.model, temporal='gru', gru_hidden=8))
  summary = train.train_and_evaluate(config, str(tmp_path / 'gru'))
  assert summary['step'] == 4 and np.isfinite(summary['dev']['mean']['ccc_concat'])
  params, restored = restored_params(tmp_path / 'gru', 'best')
  assert 'BidirectionalGRULayer' in str(restored.graphdef)
  # The evaluation's batch size: its compiled forward pass serves the Predictor too.
  predictor = inference.Predictor(restored, batch_size=config.eval_batch)
  rng = np.random.default_rng(0)
  traces = predictor.predict(0.1 * rng.standard_normal(16000 * 3).astype(np.float32), 16000,
                             mocap=rng.normal(size=(180, len(simulation.MARKERS), 3)) * 100, mocap_rate=60.0)
  assert traces.shape == (75, 3) and np.all(np.isfinite(traces))

