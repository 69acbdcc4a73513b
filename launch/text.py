"""What the command lines print: the text of a preparation, an evaluation and a prediction.

The library returns data (summaries, result dicts); the words and tables a person reads at the
terminal are written here, once, for the launch scripts and their tests.
"""

from __future__ import annotations

from typing import Any

from ccc_jax import postprocess
from ccc_jax import report


def _count(number: int, noun: str) -> str:
  return f'{number} {noun}' + ('' if number == 1 else 's')


def preparation(summary) -> str:
  """The table `launch.prepare` prints: recordings, windows and hours per split."""
  verb = 'Already prepared (nothing done):' if summary.already_prepared else 'Prepared'
  lines = [f'{verb} {summary.spec} in {summary.path}',
           f'{"split":<8}{"recordings":>12}{"windows":>10}{"hours":>9}']
  for split, counts in summary.splits.items():
    lines.append(f'{split:<8}{counts["recordings"]:>12}{counts["windows"]:>10}'
                 f'{counts["hours"]:>9.3f}')
  if not summary.already_prepared:
    per_hour = summary.seconds / summary.hours if summary.hours else float('nan')
    lines.append(f'{summary.seconds:.1f} s taken ({per_hour:.1f} s per hour of audio)')
  return '\n'.join(lines)


def evaluation(result: dict[str, Any]) -> str:
  """The markdown report of an `evaluation.evaluate_split` result."""
  tasks = result['tasks']
  num_seeds = len(result['seeds'])
  tuning = postprocess.TUNING_SPLIT
  what = ('the model' if num_seeds == 1 else
          f'ensemble: the mean of the {num_seeds} seeds\' predictions')
  lines = [f"## {result['dataset']} {result['split']}: checkpoint {result['checkpoint']} "
           f"(step {result['step']}), {_count(result['recordings'], 'recording')}, "
           f"{result['frames']} frames", '']
  if not result['labelled']:
    lines += [f"Note: {result['note']}.", '']
  else:
    lines += [f'Before post-processing ({what}):', '',
              report.metric_table(result['ensemble_before'], tasks), '',
              f'After post-processing ({what}; tuned on {tuning}):', '',
              report.metric_table(result['ensemble_after'], tasks), '']
    if num_seeds > 1:
      lines += ['Mean over seeds of each seed\'s own scores, before post-processing:', '',
                report.metric_table(result['seed_mean_before'], tasks), '']
  postprocessing = postprocess.PostProcessing.from_json(result['postprocessing'])
  lines += [f"Post-processing (tuned on {tuning} for step {result['step']}, "
            f"saved in {result['postprocess_file']}):",
            postprocess.describe(postprocessing), '', f"Written: {result['path']}"]
  return '\n'.join(lines)


def prediction(summary: dict[str, Any]) -> str:
  """What `launch.predict` prints about a `predict_recording` summary."""
  seeds = summary['seeds']
  lines = [f"wrote {summary['output']}: {summary['frames']} frames "
           f"({summary['seconds']:.2f} s, one per 40 ms), columns time,"
           f"{','.join(summary['tasks'])}; checkpoint step {summary['step']}, "
           + ('1 seed' if seeds == 1 else f'ensemble of {seeds} seeds (mean of their predictions)')]
  if summary['postprocessing'] is not None:
    lines.append('post-processing tuned on dev, applied:\n' + summary['postprocessing'])
  elif summary['postprocess_requested']:
    lines.append(f"no post-processing tuned for step {summary['step']}: raw predictions (tune "
                 'it with python -m launch.evaluate --split=dev)')
  else:
    lines.append('post-processing off: raw predictions')
  if summary['mocap_ignored']:
    lines.append('note: the model does not use mocap; --mocap was ignored')
  lines += [f'warning: {warning}' for warning in summary.get('warnings', [])]
  for task, value in summary.get('ccc', {}).items():
    lines.append(f'CCC against the labels, {task}: {value:.4f}')
  if 'plot' in summary:
    lines.append(f"plot: {summary['plot']}")
  return '\n'.join(lines)
