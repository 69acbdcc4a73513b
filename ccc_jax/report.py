"""Markdown tables: the one writer behind every table ccc-jax prints or saves."""

from __future__ import annotations

from typing import Any, Sequence

METRIC_COLUMNS = ('ccc_concat', 'ccc_seq_mean', 'pcc', 'rmse')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; cells are written with `str`."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
  return '\n'.join(lines)


def metric_table(table: dict[str, Any], tasks: Sequence[str],
                 columns: Sequence[str] = METRIC_COLUMNS) -> str:
  """One row per task plus the mean, four decimals; `table` as `StreamingMetrics.compute` gives."""
  return markdown_table(['task', *columns],
                        [[row, *(f'{table[row][c]:.4f}' for c in columns)]
                         for row in list(tasks) + ['mean']])


def held_out_table(check: dict[str, Any], tasks: Sequence[str]) -> str:
  """Mean-free CCC (ccc_concat) per task of `evaluation.held_out_check`: dev and test, raw (the
  seeds' ensemble) and post-processed (tuned on dev, applied unchanged to test)."""
  columns = [('dev', 'ensemble_before'), ('dev', 'ensemble_after'),
             ('test', 'ensemble_before'), ('test', 'ensemble_after')]
  header = ['task', 'dev raw', 'dev post-processed (tuned here)', 'test raw',
            'test post-processed (dev\'s, unchanged)']
  return markdown_table(header, [[row, *(f"{check[split][table][row]['ccc_concat']:.4f}"
                                         for split, table in columns)]
                                 for row in list(tasks) + ['mean']])
