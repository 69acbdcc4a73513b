"""Metric tables as markdown (for the terminal, results files and notes)."""

from __future__ import annotations

from typing import Any, Sequence

COLUMNS = ('ccc_concat', 'ccc_seq_mean', 'pcc', 'rmse')


def markdown_table(table: dict[str, Any], tasks: Sequence[str],
                   columns: Sequence[str] = COLUMNS) -> str:
  """One row per task plus the mean; `table` as produced by StreamingMetrics.compute."""
  lines = ['| task | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for row in list(tasks) + ['mean']:
    lines.append(f'| {row} | ' + ' | '.join(f'{table[row][c]:.4f}' for c in columns) + ' |')
  return '\n'.join(lines)
