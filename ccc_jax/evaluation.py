"""Scoring: whole-recording predictions of a prepared split, and their metric tables.

Owns the one answer to "how is a split scored?", for the trainer's dev evaluation and for
`launch.evaluate` on any split:

- `predict_split`: every window of a split is predicted, and windows are put back together by
  averaging their overlaps (`ccc_jax.windows`). Predictions carry a leading seed axis.
- `ensemble`: a run that trained several seeds at once is used as an ensemble, the mean of the
  seeds' traces. What is scored, selected as the best checkpoint, post-processed and deployed is
  that ensemble (for one seed, the seed itself).
- `score_split`: the metric table (`ccc_concat`, `ccc_seq_mean`, PCC, RMSE per task, see
  `ccc_jax.metrics`) of the ensemble at the top level, with each seed's own table under `seeds`
  and their mean under `seed_mean`.
- `evaluate_split`: a checkpoint scored before and after post-processing; the dev split tunes
  the post-processing (`ccc_jax.postprocess`) and every other split applies it unchanged.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

from flax import nnx
import jax
import numpy as np

from ccc_jax import checkpoints
from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax import files
from ccc_jax import formats
from ccc_jax import input_pipeline
from ccc_jax import metrics
from ccc_jax import postprocess
from ccc_jax import streaming
from ccc_jax import windows
from ccc_jax.config import ModelConfig
from ccc_jax.errors import CheckpointError, CorpusError


@functools.partial(jax.jit, static_argnums=0)
def predict_windows(graphdef, params, inputs):
  """Traces `[seeds, batch, T, tasks]` for a batch of windows, with stacked seed parameters."""
  return jax.vmap(lambda p: nnx.merge(graphdef, p)(inputs))(params)


def ensemble(prediction_seeds: np.ndarray) -> np.ndarray:
  """The ensemble `[frames, tasks]` of per-seed traces `[seeds, frames, tasks]`: their mean."""
  return np.mean(prediction_seeds, axis=0, dtype=np.float64).astype(np.float32)


def predict_split(graphdef, params, corpus: input_pipeline.Corpus, split: str,
                  model: ModelConfig, tasks: Sequence[str] | None,
                  batch_size: int = 64) -> dict[str, dict[str, np.ndarray]]:
  """Per recording: `prediction` `[seeds, frames, tasks]` and, for labelled splits, `truth`.

  `params` are stacked over seeds and live on one device (this process predicts every window).
  The windows' outputs are averaged where they overlap, placed `model.label_delay` frames later.
  A causal model is run as a stream over each whole recording (`ccc_jax.streaming`: each frame
  the last output of the training window ending there); its inputs are the split's windows put
  back together.
  """
  modalities = model.modalities
  if model.causal:
    runner = streaming.CausalRunner(graphdef, params, modalities, corpus.window)
    return {name: {**({'truth': truth} if truth is not None else {}),
                   'prediction': runner.run_whole(inputs)}
            for name, (inputs, truth) in split_recordings(corpus, split, modalities,
                                                          tasks, batch_size).items()}
  windows.check_delay(model.label_delay, corpus.window, int(corpus.metadata['hop']))
  labelled = tasks is not None and corpus.is_labelled(split)
  frames = corpus.recordings(split)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  averages: dict[str, dict[str, windows.OverlapAverage]] = {}
  for inputs, info in input_pipeline.iterate_split(corpus, split, batch_size, modalities,
                                                   tasks if labelled else None,
                                                   model.recording_norm_inputs):
    predicted = np.asarray(predict_windows(graphdef, params, inputs))
    for i in np.flatnonzero(info['valid']):
      name = info['recording'][i]
      if name not in averages:
        averages[name] = {'prediction': windows.OverlapAverage(frames[name],
                                                               (num_seeds, predicted.shape[-1]))}
        if labelled:
          averages[name]['truth'] = windows.OverlapAverage(frames[name],
                                                           inputs['labels'].shape[-1:])
      averages[name]['prediction'].add(info['start'][i], np.moveaxis(predicted[:, i], 0, 1),
                                       model.label_delay)
      if labelled:
        averages[name]['truth'].add(info['start'][i], inputs['labels'][i])
  missing = sorted(set(frames) - set(averages))
  if missing:
    raise CorpusError(f'{corpus.name} {split}: no windows for recordings {missing}')
  result = {}
  for name in sorted(averages):
    entry = {'prediction': np.moveaxis(averages[name]['prediction'].result(), 1, 0)}
    if labelled:
      entry['truth'] = averages[name]['truth'].result()
    result[name] = entry
  return result


def split_recordings(corpus: input_pipeline.Corpus, split: str, modalities: Sequence[str],
                     tasks: Sequence[str] | None, batch_size: int = 64):
  """Per recording of a split: `(inputs, truth)`, its whole normalised inputs (`audio`
  `[frames * 640]`, `logmel` `[frames * 4, 40]`, `mocap` `[frames, D]`, ...) and labels
  `[frames, tasks]` (None for an unlabelled split), put back together from its windows (where
  windows overlap they hold the same values)."""
  labelled = tasks is not None and corpus.is_labelled(split)
  frames = corpus.recordings(split)
  keys = list(modalities) + (['labels'] if labelled else [])
  parts: dict[str, dict[str, windows.OverlapAverage]] = {}
  for inputs, info in input_pipeline.iterate_split(corpus, split, batch_size, modalities,
                                                   tasks if labelled else None):
    for i in np.flatnonzero(info['valid']):
      name = info['recording'][i]
      entry = parts.setdefault(name, {})
      for key in keys:
        value = inputs[key][i].reshape((corpus.window, -1))  # one row per label frame
        if key not in entry:
          entry[key] = windows.OverlapAverage(frames[name], value.shape[1:])
        entry[key].add(info['start'][i], value)
  missing = sorted(set(frames) - set(parts))
  if missing:
    raise CorpusError(f'{corpus.name} {split}: no windows for recordings {missing}')
  result = {}
  for name in sorted(parts):
    whole = {key: average.result() for key, average in parts[name].items()}
    inputs = {key: whole[key].reshape(-1) if key == 'audio' else
              whole[key].reshape(frames[name] * _ROWS_PER_FRAME.get(key, 1), -1)
              for key in modalities}
    result[name] = (inputs, whole.get('labels'))
  return result


# Stored feature rows per label frame, where there are several.
_ROWS_PER_FRAME = {'logmel': features.LOGMEL_PER_FRAME, 'egemaps': egemaps.EGEMAPS_PER_FRAME}


def score(truth: dict[str, np.ndarray], prediction: dict[str, np.ndarray],
          tasks: Sequence[str]) -> dict[str, dict[str, float]]:
  """The metric table of `[frames, tasks]` traces per recording, over whole recordings."""
  streaming = metrics.StreamingMetrics(tasks)
  for name in sorted(prediction):
    streaming.update(name, truth[name], prediction[name])
  return streaming.compute()


def score_split(predictions: dict[str, dict[str, np.ndarray]],
                tasks: Sequence[str]) -> dict[str, Any]:
  """The ensemble's table at the top level; per-seed tables under `seeds`, their mean under
  `seed_mean`. For one seed the ensemble is that seed."""
  truth = {name: entry['truth'] for name, entry in predictions.items()}
  table: dict[str, Any] = score(
      truth, {name: ensemble(entry['prediction']) for name, entry in predictions.items()}, tasks)
  num_seeds = next(iter(predictions.values()))['prediction'].shape[0]
  per_seed = [score(truth, {name: entry['prediction'][s] for name, entry in predictions.items()},
                    tasks) for s in range(num_seeds)]
  table['seeds'] = per_seed
  table['seed_mean'] = {
      row: {column: float(np.mean([t[row][column] for t in per_seed])) for column in per_seed[0][row]}
      for row in per_seed[0]}
  return table


def check_corpus_matches(corpus: input_pipeline.Corpus, model: checkpoints.RestoredModel) -> None:
  """The dataset must give the model the inputs and normalisation it was trained with."""
  corpus.task_indices(model.tasks)
  where = f'{corpus.name} under {corpus.data_dir}'
  corpus.require_modalities(model.modalities)
  for modality in model.modalities:
    saved, current = model.info.stats.get(modality), corpus.stats.get(modality)
    same = saved is not None and current is not None and all(
        np.shape(saved[k]) == np.shape(current[k]) and np.allclose(saved[k], current[k])
        for k in ('mean', 'std'))
    if not same:
      raise CorpusError(
          f'{where} has other {modality!r} normalisation statistics than the dataset the model '
          'was trained on: it was prepared differently; evaluate on the data the model was '
          'trained with (--data_dir)')
  if corpus.window != model.info.window:
    raise CorpusError(f'{where} has windows of {corpus.window} frames; the model was trained on '
                      f'{model.info.window}')


def held_out_check(workdir: str, checkpoint: str | int = 'best',
                   data_dir: str | None = None) -> dict[str, Any] | None:
  """Post-processing tuned on dev and applied unchanged to test, so that no post-processed
  figure is tuned on the data it reports: `{'dev': evaluate_split(dev), 'test':
  evaluate_split(test)}`, or None when the run's corpus has no labelled test split."""
  model = checkpoints.restore_model(workdir, checkpoint)
  corpus = input_pipeline.open_corpus(model.config.dataset, data_dir or model.config.data_dir)
  if 'test' not in corpus.sources or not corpus.is_labelled('test'):
    return None
  return {split: evaluate_split(workdir, split, checkpoint, data_dir) for split in ('dev', 'test')}


def evaluate_split(workdir: str, split: str, checkpoint: str | int = 'best',
                   data_dir: str | None = None) -> dict[str, Any]:
  """Scores a checkpoint on a prepared split, before and after post-processing.

  The dataset is the one the run trained on (`dataset` and `data_dir` of the saved config),
  read from `data_dir` when given. On the dev split the post-processing is tuned on the
  ensemble prediction and saved for this checkpoint step; any other split applies the saved one.

  Returns:
    A JSON-able dict, also written to `<workdir>/eval_<split>_step<step>.json`: the checkpoint,
    dataset and split; for a labelled split the tables `ensemble_before`, `ensemble_after` and
    `seed_mean_before` (`{task: {ccc_concat, ccc_seq_mean, pcc, rmse}, 'mean': ...}`, with
    per-seed tables under `seed_mean_before['seeds']`); for an unlabelled split
    `predictions_dir` (one CSV per recording) and a `note`; and the post-processing used.

  Raises:
    CheckpointError: no such checkpoint, or (for a split other than dev) no post-processing
      tuned for this checkpoint yet.
    CorpusError: the dataset is missing or does not match the model.
  """
  model = checkpoints.restore_model(workdir, checkpoint)
  corpus = input_pipeline.open_corpus(model.config.dataset, data_dir or model.config.data_dir)
  corpus.source(split)  # an unknown split fails here, naming the splits there are
  check_corpus_matches(corpus, model)
  labelled = corpus.is_labelled(split)
  tuning = postprocess.TUNING_SPLIT
  if split == tuning and not labelled:
    raise CorpusError(f'{corpus.name}: split {split!r} has no labels to tune post-processing on')
  if split != tuning:
    postprocessing = postprocess.load(workdir, model.step)
    if postprocessing is None:
      raise CheckpointError(
          f'{postprocess.path(workdir)} holds no post-processing tuned for checkpoint step '
          f'{model.step}: tune it on dev first with python -m launch.evaluate '
          f'--workdir={workdir} --split=dev --checkpoint={checkpoint}')

  tasks = model.tasks
  causal = model.config.model.causal
  predictions = predict_split(model.graphdef, model.params, corpus, split, model.config.model,
                              tasks, batch_size=model.config.eval_batch)
  combined = {name: ensemble(entry['prediction']) for name, entry in predictions.items()}
  if split == tuning:
    # A causal run is used live: only steps that need no future (scale, bias) are tuned.
    grids = {'delay_grid_frames': (0,), 'smoothing_windows': ()} if causal else {}
    postprocessing = postprocess.tune(
        [(predictions[name]['truth'], combined[name]) for name in sorted(predictions)], tasks,
        **grids)
    postprocess.save(workdir, model.step, postprocessing, {
        'checkpoint': str(checkpoint), 'dataset': corpus.name, 'tuned_on': split,
        'prediction': f'ensemble of {model.num_seeds} seed(s)'})

  result: dict[str, Any] = {
      'workdir': model.workdir, 'checkpoint': str(checkpoint), 'step': model.step,
      'dataset': corpus.name, 'data_dir': corpus.data_dir, 'split': split,
      'tasks': list(tasks), 'seeds': list(model.config.seeds),
      'recordings': len(predictions),
      'frames': int(sum(p.shape[0] for p in combined.values())),
      'labelled': labelled, 'postprocess_file': postprocess.path(workdir),
      'postprocessing': postprocessing.to_json()}
  processed = {name: postprocessing.apply(trace).astype(np.float32)
               for name, trace in combined.items()}
  if labelled:
    truth = {name: entry['truth'] for name, entry in predictions.items()}
    tables = score_split(predictions, tasks)  # the ensemble's rows, each seed's, their mean
    result['ensemble_before'] = {row: tables[row] for row in (*tasks, 'mean')}
    result['ensemble_after'] = score(truth, processed, tasks)
    result['seed_mean_before'] = {**tables['seed_mean'], 'seeds': tables['seeds']}
  else:
    directory = os.path.join(model.workdir, 'predictions', f'{split}_step{model.step}')
    for name, trace in processed.items():
      formats.write_traces_csv(os.path.join(directory, f'{name}.csv'), trace, tasks,
                               model.info.label_rate)
    result['predictions_dir'] = directory
    result['note'] = (f'{corpus.name} {split} has no labels: no scores. The post-processed '
                      f'predictions of its {len(processed)} recordings are in {directory}')
  result['path'] = os.path.join(model.workdir, f'eval_{split}_step{model.step}.json')
  files.write_json(result['path'], result)
  return result
