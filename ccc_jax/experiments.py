"""The paper's comparisons as a grid of cells, each trained with several seeds at once.

Owns the experiment grid: which cells exist (learning MTL/STL x loss CCC/PCC/MSE x modality
audio/mocap/audio+mocap, as far as the corpus has the modalities), running each cell (the seeds
of a run are vectorised in one program by the trainer), resuming (a cell with a `result.json` is
done), and the summary: `results.json`, `results.md` (mean +- std over seeds of dev CCC per task
and their average, best cell marked) and `results.png`.

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

import ml_collections
import numpy as np

MODALITY_SETS = {
    'audio': ('audio', 'logmel'),
    'mocap': ('mocap',),
    'audio+mocap': ('audio', 'logmel', 'mocap'),
}
GRIDS = {
    'paper': {'learning': ('mtl', 'stl'), 'loss': ('ccc', 'pcc', 'mse'),
              'modality': tuple(MODALITY_SETS)},
    'loss': {'learning': ('mtl',), 'loss': ('ccc', 'pcc', 'mse'), 'modality': ('audio+mocap',)},
    'learning': {'learning': ('mtl', 'stl'), 'loss': ('ccc',), 'modality': ('audio+mocap',)},
}


@dataclasses.dataclass(frozen=True)
class Cell:
  learning: str
  loss: str
  modality: str

  @property
  def name(self) -> str:
    return f'{self.learning}-{self.loss}-{self.modality}'


def grid_cells(grid: str, corpus_modalities: Sequence[str]) -> list[Cell]:
  """The cells of `grid` whose modalities the corpus has (RECOLA: no mocap cells)."""
  if grid not in GRIDS:
    raise ValueError(f'unknown grid {grid!r}; known: {sorted(GRIDS)}')
  axes = GRIDS[grid]
  available = [m for m in axes['modality']
               if all(x in corpus_modalities for x in MODALITY_SETS[m])]
  if not available:
    raise ValueError(f'the corpus has modalities {list(corpus_modalities)}: no modality of grid '
                     f'{grid!r} ({axes["modality"]}) is available')
  return [Cell(*values) for values in itertools.product(axes['learning'], axes['loss'], available)]


def cell_runs(cell: Cell, base: ml_collections.ConfigDict,
              num_seeds: int) -> list[tuple[str, ml_collections.ConfigDict]]:
  """`(run name, config)` per training run of a cell: one for MTL, one per task for STL."""
  def configured(tasks):
    config = ml_collections.ConfigDict(base.to_dict())
    config.loss = cell.loss
    config.model.modalities = MODALITY_SETS[cell.modality]
    config.tasks = tuple(tasks)
    config.seeds = tuple(range(num_seeds))
    return config
  if cell.learning == 'mtl':
    return [('mtl', configured(base.tasks))]
  runs = []
  for task in base.tasks:
    config = configured((task,))
    config.task_weights = None  # one task: its weight is moot
    runs.append((f'stl_{task}', config))
  return runs


def run_cell(cell: Cell, base, num_seeds: int, workdir: str,
             train_fn: Callable[[ml_collections.ConfigDict, str], dict]) -> dict[str, Any]:
  """Trains a cell's runs (resuming) and returns its per-task, per-seed dev CCC."""
  cell_dir = os.path.join(workdir, cell.name)
  result_file = os.path.join(cell_dir, 'result.json')
  if os.path.exists(result_file):
    with open(result_file) as f:
      return json.load(f)
  per_task: dict[str, list[float]] = {}
  for run_name, config in cell_runs(cell, base, num_seeds):
    summary = train_fn(config, os.path.join(cell_dir, run_name))
    for task in config.tasks:
      per_task[task] = [seed_table[task]['ccc_concat'] for seed_table in summary['dev']['seeds']]
  tasks = list(base.tasks)
  average = np.mean([per_task[t] for t in tasks], axis=0)  # per seed, over tasks
  result = {'cell': dataclasses.asdict(cell), 'name': cell.name, 'seeds': num_seeds,
            'dev_ccc': {t: per_task[t] for t in tasks}, 'dev_ccc_average': average.tolist()}
  os.makedirs(cell_dir, exist_ok=True)
  temporary = result_file + '.tmp'
  with open(temporary, 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(temporary, result_file)  # a cell is done only when its result is complete
  return result


def summarise(results: list[dict[str, Any]], tasks: Sequence[str]) -> str:
  """`results.md`: mean +- std over seeds per task and their average; best cell in bold."""
  def cell_text(values):
    return f'{np.mean(values):.3f} ± {np.std(values):.3f}'
  best = max(results, key=lambda r: np.mean(r['dev_ccc_average']))
  header = ['cell', 'learning', 'loss', 'modality'] + list(tasks) + ['average']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in results:
    row = [r['name'], r['cell']['learning'].upper(), r['cell']['loss'].upper(),
           r['cell']['modality']]
    row += [cell_text(r['dev_ccc'][t]) for t in tasks] + [cell_text(r['dev_ccc_average'])]
    if r is best:
      row = [f'**{value}**' for value in row]
    lines.append('| ' + ' | '.join(row) + ' |')
  seeds = results[0]['seeds']
  return '\n'.join(lines) + (
      f'\n\nDev CCC (`ccc_concat`, whole recordings) at the last training step, mean ± std over '
      f'{seeds} seed(s). Best cell (highest average) in bold.\n')


def plot(results: list[dict[str, Any]], tasks: Sequence[str], path: str) -> None:
  """A grouped bar chart of dev CCC per cell and task, with the spread over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  columns = list(tasks) + ['average']
  width = 0.8 / len(columns)
  fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(results)), 4.5))
  x = np.arange(len(results))
  for k, column in enumerate(columns):
    values = [r['dev_ccc'][column] if column in tasks else r['dev_ccc_average'] for r in results]
    ax.bar(x + k * width, [np.mean(v) for v in values], width, yerr=[np.std(v) for v in values],
           label=column, capsize=2)
  ax.set_xticks(x + width * (len(columns) - 1) / 2)
  ax.set_xticklabels([r['name'] for r in results], rotation=45, ha='right', fontsize=8)
  ax.set_ylabel('dev CCC')
  ax.axhline(0, color='black', linewidth=0.5)
  ax.legend(fontsize=8)
  ax.set_title('Dev CCC per cell (mean ± std over seeds)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_grid(base: ml_collections.ConfigDict, grid: str, num_seeds: int, workdir: str,
             corpus_modalities: Sequence[str],
             train_fn: Callable[[ml_collections.ConfigDict, str], dict],
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs every cell (skipping finished ones) and writes results.{json,md,png} in `workdir`."""
  if num_seeds < 1:
    raise ValueError(f'seeds must be at least 1, got {num_seeds}')
  cells = grid_cells(grid, corpus_modalities)
  os.makedirs(workdir, exist_ok=True)
  results = []
  for i, cell in enumerate(cells):
    done = os.path.exists(os.path.join(workdir, cell.name, 'result.json'))
    log(f'[{i + 1}/{len(cells)}] {cell.name}' + (' (done, skipped)' if done else ''))
    results.append(run_cell(cell, base, num_seeds, workdir, train_fn))
  tasks = list(base.tasks)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'grid': grid, 'seeds': num_seeds, 'tasks': tasks, 'cells': results}, f, indent=2)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(summarise(results, tasks))
  plot(results, tasks, os.path.join(workdir, 'results.png'))
  return results
