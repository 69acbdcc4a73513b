"""The experiment grid: cells, resume, results files; and one real grid on the tiny corpus."""

import json

import numpy as np
import pytest

from ccc_jax import experiments
from ccc_jax import train
from ccc_jax.errors import ConfigError, CorpusError
from conftest import tiny_config


CORPUS = ['audio', 'logmel', 'egemaps', 'mocap']


def test_cells_follow_the_corpus_modalities():
  full = experiments.grid_cells('paper', CORPUS)
  assert len(full) == 2 * 3 * 3
  audio_only = experiments.grid_cells('paper', ['audio', 'logmel', 'egemaps'])  # RECOLA
  assert {c.modality for c in audio_only} == {'audio'}
  assert len(audio_only) == 6
  with pytest.raises(ValueError, match="unknown grid 'papers'"):
    experiments.grid_cells('papers', ['audio'])


def test_feature_axis_crosses_the_cells_with_audio_only():
  cells = experiments.grid_cells('paper', CORPUS, features=('logmel', 'egemaps'))
  # Per learning x loss: audio and audio+mocap with each feature set, mocap once.
  assert len(cells) == 2 * 3 * (2 + 1 + 2)
  by_name = {c.name: c.modalities for c in cells}
  assert by_name['mtl-ccc-audio-logmel'] == ('audio', 'logmel')
  assert by_name['mtl-ccc-audio-egemaps'] == ('audio', 'egemaps')
  assert by_name['stl-mse-audio+mocap-egemaps'] == ('audio', 'egemaps', 'mocap')
  assert by_name['mtl-ccc-mocap'] == ('mocap',)
  assert not any(name.startswith('mtl-ccc-mocap-') for name in by_name)
  comparison = experiments.grid_cells('features', CORPUS)
  assert [(c.name, c.modalities) for c in comparison] == [
      ('mtl-ccc-audio-logmel', ('audio', 'logmel')),
      ('mtl-ccc-audio-egemaps', ('audio', 'egemaps')),
      ('mtl-ccc-extracted-logmel', ('logmel',)),
      ('mtl-ccc-extracted-egemaps', ('egemaps',))]
  with pytest.raises(ConfigError, match='features must be distinct values of logmel, egemaps'):
    experiments.grid_cells('paper', CORPUS, features=('mfcc',))
  # A corpus prepared before eGeMAPS existed: said, not silently skipped.
  with pytest.raises(CorpusError, match='no egemaps.*prepare it again'):
    experiments.grid_cells('features', ['audio', 'logmel', 'mocap'])


def test_feature_axis_configures_the_runs(tmp_path):
  calls = []
  results = experiments.run_grid(tiny_config('unused'), 'features', 1, str(tmp_path), CORPUS,
                                 _fake_train(calls), log=lambda _: None)
  assert [c[3] for c in calls] == [('audio', 'logmel'), ('audio', 'egemaps'), ('logmel',),
                                   ('egemaps',)]
  assert [r['cell']['features'] for r in results] == ['logmel', 'egemaps', 'logmel', 'egemaps']
  table = (tmp_path / 'results.md').read_text()
  assert '| mtl-ccc-extracted-egemaps | MTL | CCC | extracted | egemaps |' in table


def _fake_train(calls):
  """Stands in for the trainer: dev CCC encodes loss, modality and seed, so rows are checkable."""
  def train_fn(config, workdir):
    calls.append((workdir, tuple(config.tasks), config.loss, tuple(config.model.modalities),
                  tuple(config.seeds)))
    base = {'ccc': 0.5, 'pcc': 0.4, 'mse': 0.3}[config.loss] + 0.1 * len(config.model.modalities)
    seeds = [{t: {'ccc_concat': base + 0.01 * s + (0.05 if len(config.tasks) == 1 else 0)}
              for t in config.tasks} for s in config.seeds]
    # The last evaluation is worse than the best: the grid scores the best dev step.
    last = [{t: {'ccc_concat': v[t]['ccc_concat'] - 0.2} for t in v} for v in seeds]
    return {'dev': {'seeds': last}, 'best_dev': {'seeds': seeds}, 'best_step': 150}
  return train_fn


def test_grid_runs_every_cell_once_and_resumes(tmp_path):
  config = tiny_config('unused')
  calls = []
  results = experiments.run_grid(config, 'paper', 2, str(tmp_path), CORPUS,
                                 _fake_train(calls), log=lambda _: None)
  assert len(results) == 18
  assert len(calls) == 9 + 9 * 3  # MTL: one run per cell; STL: one run per task
  stl = [c for c in calls if len(c[1]) == 1]
  assert {c[1][0] for c in stl} == set(config.tasks)
  assert all(c[4] == (0, 1) for c in calls)
  best = max(results, key=lambda r: np.mean(r['dev_ccc_average']))
  assert best['name'] == 'stl-ccc-audio+mocap-logmel'
  assert best['dev_ccc']['valence'] == pytest.approx([0.5 + 0.3 + 0.05, 0.5 + 0.3 + 0.06])
  assert best['best_step'] == {f'stl_{task}': 150 for task in config.tasks}
  table = (tmp_path / 'results.md').read_text()
  assert '**stl-ccc-audio+mocap-logmel**' in table
  assert '0.855 ± 0.005' in table
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['seeds'] == 2 and len(saved['cells']) == 18
  assert (tmp_path / 'results.png').stat().st_size > 10_000
  # Again: every cell is finished, nothing trains.
  experiments.run_grid(config, 'paper', 2, str(tmp_path), CORPUS,
                       _fake_train(calls), log=lambda _: None)
  assert len(calls) == 36


def test_grids_run_into_one_workdir_share_one_table(tmp_path):
  """`--grid=learning` then `--grid=loss`: the second table keeps the first grid's cells; a
  cell over other tasks is left out, and said."""
  config = tiny_config('unused')
  calls, said = [], []
  experiments.run_grid(config, 'learning', 2, str(tmp_path), CORPUS, _fake_train(calls),
                       log=said.append)
  other_tasks = tmp_path / 'mtl-ccc-mocap'
  other_tasks.mkdir()
  (other_tasks / 'result.json').write_text(json.dumps(
      {'name': 'mtl-ccc-mocap', 'seeds': 1, 'dev_ccc': {'valence': [0.1]}}))
  results = experiments.run_grid(config, 'loss', 3, str(tmp_path), CORPUS, _fake_train(calls),
                                 log=said.append)
  names = ['mtl-ccc-audio+mocap-logmel', 'mtl-pcc-audio+mocap-logmel',
           'mtl-mse-audio+mocap-logmel', 'stl-ccc-audio+mocap-logmel']
  assert [r['name'] for r in results] == names  # the loss grid's, then the other finished
  assert len(calls) == 1 + 3 + 2  # learning: MTL + 3 STL; loss: PCC and MSE (CCC was done)
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert [c['name'] for c in saved['cells']] == names
  table = (tmp_path / 'results.md').read_text()
  assert all(f'| {name} |' in table or f'**{name}**' in table for name in names)
  assert "each cell's seeds (2, 3" in table  # the grids ran 2 and 3 seeds
  assert any(line.startswith('mtl-ccc-mocap: not in the table (tasks valence') for line in said)


@pytest.mark.slow
def test_mtl_and_stl_cells_on_the_tiny_corpus(tiny_data_dir, tmp_path, monkeypatch):
  """Real training: an MTL and an STL cell with two vectorised seeds each (mocap only: the
  cheapest model to compile; the train step itself is tested in test_train_step.py)."""
  monkeypatch.setitem(experiments.GRIDS, 'smoke',
                      {'learning': ('mtl', 'stl'), 'loss': ('ccc',), 'modality': ('mocap',),
                       'features': ('logmel',)})
  # Two tasks: an STL cell still trains one network per task, one run fewer than three.
  config = tiny_config(tiny_data_dir, num_steps=10, tasks=('activation', 'valence'))
  results = experiments.run_grid(config, 'smoke', 2, str(tmp_path), CORPUS,
                                 train.train_and_evaluate, log=lambda _: None)
  assert [r['name'] for r in results] == ['mtl-ccc-mocap', 'stl-ccc-mocap']
  for r in results:
    for task in config.tasks:
      assert len(r['dev_ccc'][task]) == 2
      assert all(np.isfinite(r['dev_ccc'][task]))
      assert r['dev_ccc'][task][0] != r['dev_ccc'][task][1]  # two different seeds
  stl_summary = json.loads((tmp_path / 'stl-ccc-mocap' / 'stl_valence' / 'summary.json').read_text())
  assert stl_summary['tasks'] == ['valence']
