"""Whole-recording predictions from windowed data, and their scores.

Owns the path from a prepared split to per-recording traces: every window is predicted, windows
are put back together by averaging their overlaps (`ccc_jax.windows.reassemble`), and the
streaming metric scores whole recordings (`ccc_concat` and `ccc_seq_mean`, see metrics.py).
Predictions carry a leading seed axis: a run that trained several seeds at once is scored per
seed, and the table reports the mean over seeds.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from flax import nnx
import jax
import numpy as np

from ccc_jax import input_pipeline
from ccc_jax import metrics
from ccc_jax import windows


@functools.partial(jax.jit, static_argnums=0)
def predict_windows(graphdef, params, inputs):
  """Traces `[seeds, batch, T, tasks]` for a batch of windows, with stacked seed parameters."""
  return jax.vmap(lambda p: nnx.merge(graphdef, p)(inputs))(params)


def predict_split(graphdef, params, corpus: input_pipeline.Corpus, split: str,
                  modalities: Sequence[str], tasks: Sequence[str] | None,
                  batch_size: int = 64) -> dict[str, dict[str, np.ndarray]]:
  """Per recording: `prediction` `[seeds, frames, tasks]` and, for labelled splits, `truth`.

  `params` are stacked over seeds and live on one device (this process predicts every window).
  """
  labelled = tasks is not None and corpus.is_labelled(split)
  parts: dict[str, dict[str, list]] = {}
  for inputs, info in input_pipeline.iterate_split(corpus, split, batch_size, modalities,
                                                   tasks if labelled else None):
    predicted = np.asarray(predict_windows(graphdef, params, inputs))
    for i in np.flatnonzero(info['valid']):
      part = parts.setdefault(info['recording'][i], {'start': [], 'prediction': [], 'truth': []})
      part['start'].append(info['start'][i])
      part['prediction'].append(predicted[:, i])
      if labelled:
        part['truth'].append(inputs['labels'][i])
  frames = corpus.recordings(split)
  missing = sorted(set(frames) - set(parts))
  if missing:
    raise input_pipeline.CorpusError(f'{corpus.name} {split}: no windows for recordings {missing}')
  result = {}
  for name, part in sorted(parts.items()):
    starts = np.asarray(part['start'])
    stacked = np.stack(part['prediction'], axis=1)  # [seeds, windows, T, tasks]
    entry = {'prediction': np.stack([windows.reassemble(starts, s, frames[name])
                                     for s in stacked])}
    if labelled:
      entry['truth'] = windows.reassemble(starts, np.stack(part['truth']), frames[name])
    result[name] = entry
  return result


def score(recordings: dict[str, dict[str, np.ndarray]], tasks: Sequence[str],
          seed_index: int = 0) -> dict[str, dict[str, float]]:
  """The metric table of one seed over whole recordings."""
  streaming = metrics.StreamingMetrics(tasks)
  for name, entry in recordings.items():
    streaming.update(name, entry['truth'], entry['prediction'][seed_index])
  return streaming.compute()


def score_seeds(recordings: dict[str, dict[str, np.ndarray]],
                tasks: Sequence[str]) -> dict[str, Any]:
  """Tables per seed (`seeds`), and their mean over seeds in the same layout at the top level."""
  num_seeds = next(iter(recordings.values()))['prediction'].shape[0]
  per_seed = [score(recordings, tasks, s) for s in range(num_seeds)]
  table: dict[str, Any] = {
      row: {name: float(np.mean([t[row][name] for t in per_seed])) for name in per_seed[0][row]}
      for row in per_seed[0]}
  table['seeds'] = per_seed
  return table
