"""The paper's comparisons as a grid of cells, each trained with several seeds at once.

Owns the experiment grid: which cells exist (learning MTL/STL x loss CCC/PCC/MSE x modality
audio/mocap/audio+mocap x, for the modalities with audio, the extracted features log-mel or
eGeMAPS; as far as the corpus has the modalities), running each cell (the seeds
of a run are vectorised in one program by the trainer), resuming (a cell with a `result.json` is
done), and the summary of every finished cell in the workdir, whichever grid ran it:
`results.json`, `results.md` (mean +- std over seeds of dev CCC per task and their average,
best cell marked) and `results.png`.

MTL cell: one run, one network for all tasks. STL cell: one run per task, each a single-task
network (the paper's one model per dimension). The score is the dev `ccc_concat` of the last
training step, per seed (no selection on dev, so the table is not optimistic).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from ccc_jax import files
from ccc_jax import plots
from ccc_jax import report
from ccc_jax.config import RunConfig
from ccc_jax.errors import ConfigError, CorpusError

# The model's modalities per cell modality; FEATURES stands for the cell's extracted features
# (the semi-end-to-end method's features beside the raw audio). `extracted`: those features
# alone, no raw audio.
FEATURES = 'features'
MODALITY_SETS = {
    'audio': ('audio', FEATURES),
    'extracted': (FEATURES,),
    'mocap': ('mocap',),
    'audio+mocap': ('audio', FEATURES, 'mocap'),
}
FEATURE_SETS = ('logmel', 'egemaps')
GRIDS = {
    'paper': {'learning': ('mtl', 'stl'), 'loss': ('ccc', 'pcc', 'mse'),
              'modality': ('audio', 'mocap', 'audio+mocap'), 'features': ('logmel',)},
    'loss': {'learning': ('mtl',), 'loss': ('ccc', 'pcc', 'mse'), 'modality': ('audio+mocap',),
             'features': ('logmel',)},
    'learning': {'learning': ('mtl', 'stl'), 'loss': ('ccc',), 'modality': ('audio+mocap',),
                 'features': ('logmel',)},
    # The extracted features compared: raw audio + each, and each alone.
    'features': {'learning': ('mtl',), 'loss': ('ccc',), 'modality': ('audio', 'extracted'),
                 'features': FEATURE_SETS},
}


@dataclasses.dataclass(frozen=True)
class Cell:
  learning: str
  loss: str
  modality: str
  features: str | None = None  # None where the modality has no extracted features (mocap)

  @property
  def name(self) -> str:
    suffix = f'-{self.features}' if self.features else ''
    return f'{self.learning}-{self.loss}-{self.modality}{suffix}'

  @property
  def modalities(self) -> tuple[str, ...]:
    """The model's `config.modalities` for this cell."""
    return tuple(self.features if m == FEATURES else m for m in MODALITY_SETS[self.modality])


def grid_cells(grid: str, corpus_modalities: Sequence[str],
               features: Sequence[str] | None = None) -> list[Cell]:
  """The cells of `grid` whose modalities the corpus has (RECOLA: no mocap cells).

  `features` replaces the grid's extracted-feature axis (e.g. `('logmel', 'egemaps')` runs the
  paper's grid once with each); a modality without extracted features (mocap) is one cell.
  """
  if grid not in GRIDS:
    raise ValueError(f'unknown grid {grid!r}; known: {sorted(GRIDS)}')
  axes = GRIDS[grid]
  features = tuple(features or axes['features'])
  unknown = [f for f in features if f not in FEATURE_SETS]
  if unknown or len(set(features)) != len(features):
    raise ConfigError(f'features must be distinct values of {", ".join(FEATURE_SETS)}, got '
                      f'{", ".join(features)}')
  # A corpus without mocap (RECOLA) just has no mocap cells; one without a feature set asked
  # for was prepared by an older version.
  lacking = [f for f in features if f not in corpus_modalities]
  if lacking:
    raise CorpusError(f'the corpus has no {", ".join(lacking)} (its modalities: '
                      f'{", ".join(corpus_modalities)}); prepare it again with python -m '
                      'launch.prepare')
  cells = []
  for learning, loss, modality in itertools.product(axes['learning'], axes['loss'],
                                                    axes['modality']):
    for feature in (features if FEATURES in MODALITY_SETS[modality] else (None,)):
      cell = Cell(learning, loss, modality, feature)
      if all(m in corpus_modalities for m in cell.modalities):
        cells.append(cell)
  if not cells:
    raise ValueError(f'the corpus has modalities {list(corpus_modalities)}: no cell of grid '
                     f'{grid!r} (modalities {axes["modality"]}, features {features}) is '
                     'available')
  return cells


def cell_runs(cell: Cell, base: RunConfig, num_seeds: int) -> list[tuple[str, RunConfig]]:
  """`(run name, config)` per training run of a cell: one for MTL, one per task for STL."""
  def configured(tasks, task_weights):
    return base.replace(
        loss=cell.loss, tasks=tuple(tasks), task_weights=task_weights,
        seeds=tuple(range(num_seeds)),
        model=dataclasses.replace(base.model, modalities=cell.modalities))
  if cell.learning == 'mtl':
    return [('mtl', configured(base.tasks, base.task_weights))]
  # One task: its weight is moot.
  return [(f'stl_{task}', configured((task,), None)) for task in base.tasks]


def run_cell(cell: Cell, base: RunConfig, num_seeds: int, workdir: str,
             train_fn: Callable[[RunConfig, str], dict]) -> dict[str, Any]:
  """Trains a cell's runs (resuming) and returns its per-task, per-seed dev CCC."""
  cell_dir = os.path.join(workdir, cell.name)
  result_file = os.path.join(cell_dir, 'result.json')
  if os.path.exists(result_file):
    with open(result_file) as f:
      return json.load(f)
  per_task: dict[str, list[float]] = {}
  best_steps: dict[str, int] = {}
  for run_name, config in cell_runs(cell, base, num_seeds):
    summary = train_fn(config, os.path.join(cell_dir, run_name))
    # At the best dev step (the checkpoint kept), not the last: the run may have gone on past it.
    dev = summary['best_dev'] or summary['dev']
    best_steps[run_name] = summary['best_step']
    for task in config.tasks:
      per_task[task] = [seed_table[task]['ccc_concat'] for seed_table in dev['seeds']]
  tasks = list(base.tasks)
  average = np.mean([per_task[t] for t in tasks], axis=0)  # per seed, over tasks
  result = {'cell': dataclasses.asdict(cell), 'name': cell.name, 'seeds': num_seeds,
            'dev_ccc': {t: per_task[t] for t in tasks}, 'dev_ccc_average': average.tolist(),
            'best_step': best_steps}
  files.write_json(result_file, result)  # a cell is done only when its result is complete
  return result


def summarise(results: list[dict[str, Any]], tasks: Sequence[str]) -> str:
  """`results.md`: mean +- std over seeds per task and their average; best cell in bold."""
  def cell_text(values):
    return f'{np.mean(values):.3f} ± {np.std(values):.3f}'
  best = max(results, key=lambda r: np.mean(r['dev_ccc_average']))
  header = ['cell', 'learning', 'loss', 'modality', 'features'] + list(tasks) + ['average']
  rows = []
  for r in results:
    row = [r['name'], r['cell']['learning'].upper(), r['cell']['loss'].upper(),
           r['cell']['modality'], r['cell'].get('features') or '-']
    row += [cell_text(r['dev_ccc'][t]) for t in tasks] + [cell_text(r['dev_ccc_average'])]
    if r is best:
      row = [f'**{value}**' for value in row]
    rows.append(row)
  seeds = sorted({r['seeds'] for r in results})
  over = (f'{seeds[0]} seed(s)' if len(seeds) == 1 else
          f'each cell\'s seeds ({", ".join(map(str, seeds))}: `seeds` in results.json)')
  return report.markdown_table(header, rows) + (
      f'\n\nDev CCC (`ccc_concat`, whole recordings) at each run\'s best dev step (the '
      f'checkpoint kept, chosen by the seeds\' ensemble on dev, so these figures are '
      f'optimistic), mean ± std over {over}. Best cell (highest average) in bold.\n')


def finished_cells(workdir: str, tasks: Sequence[str], first: Sequence[dict[str, Any]] = (),
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """`first`, then every other finished cell in `workdir` (a folder with a `result.json`) over
  the same tasks, by name: the table covers every grid run into the workdir, so that
  `--grid=learning` then `--grid=loss` (or an interrupted grid run again with another axis)
  leaves one table, not the last grid's alone."""
  results = list(first)
  named = {r['name'] for r in results}
  for name in sorted(os.listdir(workdir)):
    result_file = os.path.join(workdir, name, 'result.json')
    if name in named or not os.path.isfile(result_file):
      continue
    with open(result_file) as f:
      result = json.load(f)
    if sorted(result['dev_ccc']) != sorted(tasks):
      log(f'{name}: not in the table (tasks {", ".join(sorted(result["dev_ccc"]))}, not '
          f'{", ".join(tasks)})')
      continue
    results.append(result)
  return results


def run_grid(base: RunConfig, grid: str, num_seeds: int, workdir: str,
             corpus_modalities: Sequence[str],
             train_fn: Callable[[RunConfig, str], dict],
             log: Callable[[str], None] = print,
             features: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Runs every cell (skipping finished ones) and writes results.{json,md,png} in `workdir`
  over the grid's cells and any other finished cells there (`finished_cells`), which it
  returns; `features` as in `grid_cells`."""
  if num_seeds < 1:
    raise ValueError(f'seeds must be at least 1, got {num_seeds}')
  cells = grid_cells(grid, corpus_modalities, features)
  files.make_dirs(workdir)
  results = []
  for i, cell in enumerate(cells):
    done = os.path.exists(os.path.join(workdir, cell.name, 'result.json'))
    log(f'[{i + 1}/{len(cells)}] {cell.name}' + (' (done, skipped)' if done else ''))
    results.append(run_cell(cell, base, num_seeds, workdir, train_fn))
  tasks = list(base.tasks)
  results = finished_cells(workdir, tasks, results, log)
  files.write_json(os.path.join(workdir, 'results.json'),
                   {'grid': grid, 'seeds': num_seeds, 'tasks': tasks, 'cells': results})
  with files.atomic_write(os.path.join(workdir, 'results.md')) as f:
    f.write(summarise(results, tasks))
  plots.plot_grid(results, tasks, os.path.join(workdir, 'results.png'))
  return results
