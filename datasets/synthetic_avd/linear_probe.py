r"""How much of each task a linear model recovers from each modality of a prepared corpus.

    python -m datasets.synthetic_avd.linear_probe --data_dir=data --split=test

Owns the difficulty check quoted in datasets/README.md: ridge regression from causal context
averages (past 1, 2 and 4 s) of per-frame features (log-mel averaged per label frame, mocap
features) to the gold standard, trained on the train split, scored on another split by the CCC
over all its frames. A fair synthetic corpus should let activation be heard better than valence
and should not hand any task to a linear model on one channel.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
import numpy as np
import scipy.ndimage

from ccc_jax import metrics
from ccc_jax import windows

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the dataset was prepared.')
_NAME = flags.DEFINE_string('name', 'synthetic_avd/default', 'Prepared dataset to probe.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to score on.')
_CONTEXT_FRAMES = (25, 50, 100)
_RIDGE = 10.0  # per 1000 training frames


def _recordings(source, frames_by_recording):
  """Whole-recording traces {id: {feature: [frames, dim]}} reassembled from windows."""
  grouped = {}
  for index in range(len(source)):
    example = source[index]
    grouped.setdefault(example['recording'].decode(), []).append(example)
  traces = {}
  for recording, examples in grouped.items():
    starts = np.array([example['start'] for example in examples])
    num_frames = frames_by_recording[recording]
    per_frame = {'logmel': [e['logmel'].reshape(-1, 4, e['logmel'].shape[-1]).mean(1)
                            for e in examples],
                 'labels': [e['labels'] for e in examples]}
    if 'mocap' in examples[0]:
      per_frame['mocap'] = [e['mocap'] for e in examples]
    traces[recording] = {name: windows.reassemble(starts, np.stack(values), num_frames)
                         for name, values in per_frame.items()}
  return traces


def _design(traces, modalities: Sequence[str]):
  inputs, targets = [], []
  for trace in traces.values():
    frames = np.concatenate([trace[name] for name in modalities], axis=1)
    inputs.append(np.concatenate(
        [scipy.ndimage.uniform_filter1d(frames, width, axis=0, origin=(width - 1) // 2,
                                        mode='nearest') for width in _CONTEXT_FRAMES], axis=1))
    targets.append(trace['labels'])
  return np.concatenate(inputs), np.concatenate(targets)


def probe(name: str, data_dir: str, split: str) -> dict[str, dict[str, float]]:
  """{modalities: {task: CCC on `split`}} for audio (log-mel), mocap and both."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata
  sources = tfds.data_source(name, data_dir=data_dir)
  train = _recordings(sources['train'], metadata['recordings']['train'])
  scored = _recordings(sources[split], metadata['recordings'][split])
  results = {}
  for label, modalities in (('audio', ['logmel']), ('mocap', ['mocap']),
                            ('audio+mocap', ['logmel', 'mocap'])):
    if 'mocap' in modalities and 'mocap' not in metadata['modalities']:
      continue
    inputs, targets = _design(train, modalities)
    test_inputs, test_targets = _design(scored, modalities)
    mean, std = inputs.mean(0), inputs.std(0) + 1e-6
    with_bias = lambda x: np.c_[(x - mean) / std, np.ones(len(x))]
    design = with_bias(inputs)
    ridge = _RIDGE * len(inputs) / 1000 * np.eye(design.shape[1])
    weights = np.linalg.solve(design.T @ design + ridge, design.T @ targets)
    scores = metrics.concordance_cc_per_column(test_targets, with_bias(test_inputs) @ weights)
    results[label] = {task: round(float(score), 3)
                      for task, score in zip(metadata['tasks'], scores)}
  return results


def main(argv: Sequence[str]) -> None:
  del argv
  for label, scores in probe(_NAME.value, _DATA_DIR.value, _SPLIT.value).items():
    print(f'{label:<12}' + '  '.join(f'{task} {score:.3f}' for task, score in scores.items()))


if __name__ == '__main__':
  flags.mark_flag_as_required('data_dir')
  app.run(main)
