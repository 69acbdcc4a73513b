"""Figures: predicted traces of a recording, and the experiment grid's bar chart.

Drawn with the `matplotlib.figure.Figure` API, which needs no backend (so a user's notebook keeps
its own), and written as PNG through `files.atomic_write` (a failed write leaves no partial
image).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ccc_jax import files


def _save(figure, path: str, dpi: int) -> None:
  figure.tight_layout()
  files.write_with(path, lambda f: figure.savefig(f, format='png', dpi=dpi), mode='wb')


def plot_traces(path: str, prediction: np.ndarray, tasks: Sequence[str], label_rate: int,
                title: str, gold: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
  """A PNG with one panel per task: the predicted trace over time and, for the tasks in `gold`
  (task -> (times, values)), the gold standard."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  times = np.arange(prediction.shape[0]) / label_rate
  figure = Figure(figsize=(10, 1.2 + 1.8 * len(tasks)))
  axes = figure.subplots(len(tasks), 1, sharex=True, squeeze=False)
  for axis, task, column in zip(axes[:, 0], tasks, prediction.T):
    axis.plot(times, column, label='prediction', linewidth=0.8)
    if gold and task in gold:
      axis.plot(*gold[task], label='gold standard', linewidth=0.8)
    axis.set_ylabel(task)
    axis.grid(alpha=0.3)
  axes[0, 0].legend(loc='upper right', fontsize='small')
  axes[0, 0].set_title(title, fontsize='medium')
  axes[-1, 0].set_xlabel('time (s)')
  _save(figure, path, dpi=100)


def plot_grid(results: list[dict[str, Any]], tasks: Sequence[str], path: str) -> None:
  """A grouped bar chart of dev CCC per grid cell and task, with the spread over seeds."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  columns = list(tasks) + ['average']
  width = 0.8 / len(columns)
  figure = Figure(figsize=(max(8, 0.9 * len(results)), 4.5))
  ax = figure.subplots()
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
  _save(figure, path, dpi=120)
