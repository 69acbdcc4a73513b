"""Tests of evaluating a checkpoint (`evaluation.evaluate_split`, `launch.evaluate`) and of
predicting a recording from files (`inference.predict_recording`, `launch.predict`).

Each test works on its own copy of the session's tiny trained workdir (under 1 MB), since
evaluation writes post-processing and results into the workdir. The launch scripts run as
subprocesses only to prove the command lines and their exit codes; the logic behind them is
called in-process.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import formats
from ccc_jax import inference
from ccc_jax import input_pipeline
from ccc_jax import postprocess
from ccc_jax.errors import CheckpointError, DataError
from conftest import REPO
from datasets.synthetic_avd import simulation
from launch import text
from tests import fixtures

LEAD_FRAMES = 30  # 1.2 s, on the tuning grid (multiples of 10 frames)


@pytest.fixture
def workdir(tiny_workdir, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(tiny_workdir, copy)
  return copy


def test_evaluate_tunes_on_dev_and_applies_on_test(workdir):
  with pytest.raises(CheckpointError, match='--split=dev'):
    evaluation.evaluate_split(workdir, 'test')

  dev = evaluation.evaluate_split(workdir, 'dev')
  tasks = dev['tasks']
  for table in ('ensemble_before', 'ensemble_after', 'seed_mean_before'):
    assert set(dev[table]) >= set(tasks) | {'mean'}
    assert set(dev[table]['mean']) == {'ccc_concat', 'ccc_seq_mean', 'pcc', 'rmse'}
  # One seed: the ensemble is the seed; each post-processing step is kept only if it gains.
  assert dev['ensemble_before']['mean'] == dev['seed_mean_before']['mean']
  for task in tasks:
    assert dev['ensemble_after'][task]['ccc_concat'] >= dev['ensemble_before'][task]['ccc_concat']
  with open(workdir / postprocess.FILE_NAME) as f:
    saved = json.load(f)['steps'][str(dev['step'])]
  assert saved['postprocessing'] == dev['postprocessing'] and saved['tuned_on'] == 'dev'
  with open(workdir / f"eval_dev_step{dev['step']}.json") as f:
    assert json.load(f)['ensemble_after'] == dev['ensemble_after']

  test = evaluation.evaluate_split(workdir, 'test')
  assert test['postprocessing'] == dev['postprocessing']  # applied unchanged
  kept = any(postprocess.PostProcessing.from_json(dev['postprocessing']).kept.values())
  assert (test['ensemble_after'] != test['ensemble_before']) == kept
  report = text.evaluation(test)
  assert '| activation |' in report and 'After post-processing' in report

  # Another checkpoint step has no post-processing of its own yet.
  other = 10 if dev['step'] == 20 else 20
  with pytest.raises(CheckpointError, match=f'step {other}'):
    evaluation.evaluate_split(workdir, 'test', checkpoint=str(other))


def _two_seeds(model):
  """`model` as a two-seed run: the second seed's parameters are the first's, scaled by 0.8."""
  params = jax.tree.map(lambda p: jnp.concatenate([p, 0.8 * p]), model.params)
  return dataclasses.replace(model, params=params, config=model.config.replace(seeds=(0, 1)))


def test_several_seeds_are_scored_as_an_ensemble_and_per_seed(workdir, monkeypatch):
  restore_model = checkpoints.restore_model
  monkeypatch.setattr(checkpoints, 'restore_model',
                      lambda *args, **kwargs: _two_seeds(restore_model(*args, **kwargs)))
  dev = evaluation.evaluate_split(workdir, 'dev')
  per_seed = dev['seed_mean_before']['seeds']
  assert len(per_seed) == 2 and per_seed[0] != per_seed[1]
  assert dev['seed_mean_before']['mean']['rmse'] == pytest.approx(
      (per_seed[0]['mean']['rmse'] + per_seed[1]['mean']['rmse']) / 2)
  assert dev['ensemble_before'] not in per_seed
  report = text.evaluation(dev)
  assert "the mean of the 2 seeds' predictions" in report and 'Mean over seeds' in report

  predictor = inference.Predictor.load(workdir, use_postprocessing=False)
  audio, positions = np.zeros(16000, np.float32), np.ones((60, len(simulation.MARKERS), 3))
  seeds = predictor.predict_seeds(audio, 16000, positions, 60.0)
  assert seeds.shape == (2, 25, 3)
  np.testing.assert_allclose(predictor.predict(audio, 16000, positions, 60.0), seeds.mean(0),
                             rtol=1e-6, atol=1e-7)


def _leading_predictions(graphdef, params, corpus, split, modalities, tasks, batch_size=64,
                         causal=False):
  """Stands in for `evaluation.predict_split`: predictions that lead the gold by LEAD_FRAMES."""
  del graphdef, params, modalities, batch_size, causal
  result = {}
  for index, (name, frames) in enumerate(sorted(corpus.recordings(split).items())):
    rng = np.random.default_rng([len(split), index])
    base = ndimage.gaussian_filter1d(rng.standard_normal((frames + LEAD_FRAMES, len(tasks))),
                                     10, axis=0) * 3
    entry = {'prediction': base[None, LEAD_FRAMES:].astype(np.float32)}
    if corpus.is_labelled(split):
      entry['truth'] = base[:frames].astype(np.float32)
    result[name] = entry
  return result


def test_postprocessing_finds_the_delay_a_lagging_gold_standard_needs(workdir, monkeypatch):
  monkeypatch.setattr(evaluation, 'predict_split', _leading_predictions)
  dev = evaluation.evaluate_split(workdir, 'dev')
  tuned = postprocess.PostProcessing.from_json(dev['postprocessing'])
  assert all(steps.delay_frames == LEAD_FRAMES for steps in tuned.per_task.values())
  for split_result in (dev, evaluation.evaluate_split(workdir, 'test')):
    before = split_result['ensemble_before']['mean']['ccc_concat']
    after = split_result['ensemble_after']['mean']['ccc_concat']
    assert before < 0.5 and after > 0.9
  predictor = inference.Predictor.load(workdir)
  assert predictor.postprocessing == tuned


def test_unlabelled_split_gets_prediction_files_and_a_note(workdir, monkeypatch):
  postprocess.save(
      workdir, checkpoints.restore_model(workdir).step,
      postprocess.PostProcessing.identity(('activation', 'valence', 'dominance')), {})
  monkeypatch.setattr(input_pipeline.Corpus, 'is_labelled', lambda self, split: split != 'test')
  result = evaluation.evaluate_split(workdir, 'test')
  assert 'ensemble_before' not in result and 'no labels' in result['note']
  (name, frames), = input_pipeline.open_corpus(
      result['dataset'], result['data_dir']).recordings('test').items()
  times, columns = formats.read_traces_csv(os.path.join(result['predictions_dir'],
                                                          f'{name}.csv'))
  assert len(times) == frames and sorted(columns) == sorted(result['tasks'])
  assert 'Note:' in text.evaluation(result)


def test_predict_recording_writes_traces_plot_and_scores_labels(workdir, tmp_path):
  wav, mocap = fixtures.write_recording(tmp_path)
  labels = tmp_path / 'gold.csv'
  labels.write_text('time,valence,unknown_task\n' +
                    ''.join(f'{i * 0.04:.2f},{np.sin(i / 5):.4f},0\n' for i in range(50)))
  step = checkpoints.restore_model(workdir).step
  delayed = postprocess.TaskPostProcessing(delay_frames=5)
  postprocess.save(workdir, step, postprocess.PostProcessing(
      {t: delayed for t in ('activation', 'valence', 'dominance')}), {})

  output = tmp_path / 'out' / 'talk.csv'
  summary = inference.predict_recording(str(workdir), str(wav), str(output), mocap=str(mocap),
                                        plot=str(tmp_path / 'talk.png'), labels=str(labels))
  assert summary['frames'] == 50 and set(summary['ccc']) == {'valence'}
  assert 'delay 0.20 s' in summary['postprocessing']
  times, columns = formats.read_traces_csv(str(output))
  np.testing.assert_allclose(times, np.arange(50) * 0.04)
  assert (tmp_path / 'talk.png').read_bytes()[:4] == b'\x89PNG'
  assert 'CCC against the labels, valence' in text.prediction(summary)

  raw = inference.predict_recording(str(workdir), str(wav), str(tmp_path / 'raw.csv'),
                                    mocap=str(mocap), use_postprocessing=False)
  assert raw['postprocessing'] is None
  _, raw_columns = formats.read_traces_csv(str(tmp_path / 'raw.csv'))
  np.testing.assert_allclose(columns['valence'][5:], raw_columns['valence'][:-5], atol=2e-6)


def test_predict_recording_bad_inputs(workdir, tmp_path):
  wav, mocap = fixtures.write_recording(tmp_path)
  output = str(tmp_path / 'out.csv')
  with pytest.raises(ValueError, match='--mocap=FILE.csv'):
    inference.predict_recording(str(workdir), str(wav), output)
  with pytest.raises(DataError, match='mocap file not found'):
    inference.predict_recording(str(workdir), str(wav), output, mocap=str(tmp_path / 'no.csv'))
  with pytest.raises(DataError, match='none of the tasks'):
    labels = tmp_path / 'labels.csv'
    labels.write_text('time,happiness\n0,1\n')
    inference.predict_recording(str(workdir), str(wav), output, mocap=str(mocap),
                                labels=str(labels))
  with pytest.raises(CheckpointError, match='has no step 3'):
    inference.predict_recording(str(workdir), str(wav), output, mocap=str(mocap),
                                checkpoint='3')
  assert not os.path.exists(output)


def _run(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ), timeout=300)


@pytest.mark.slow
def test_command_lines_and_exit_codes(workdir, tmp_path):
  untuned = _run('launch.evaluate', f'--workdir={workdir}', '--split=test')
  assert untuned.returncode == 1, untuned.stderr
  assert 'error:' in untuned.stderr and '--split=dev' in untuned.stderr

  tuned = _run('launch.evaluate', f'--workdir={workdir}', '--split=dev')
  assert tuned.returncode == 0, tuned.stderr
  assert '| activation |' in tuned.stdout and 'After post-processing' in tuned.stdout

  wav, mocap = fixtures.write_recording(tmp_path)
  output = tmp_path / 'talk.csv'
  predicted = _run('launch.predict', f'--workdir={workdir}', f'--audio={wav}',
                   f'--mocap={mocap}', f'--output={output}', f'--plot={tmp_path / "talk.png"}')
  assert predicted.returncode == 0, predicted.stderr
  assert 'post-processing tuned on dev, applied' in predicted.stdout
  assert output.read_text().startswith('time,activation,valence,dominance\n0.00,')
  assert (tmp_path / 'talk.png').exists()
