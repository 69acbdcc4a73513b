r"""Scores a trained checkpoint on a prepared split, before and after post-processing.

    python -m launch.evaluate --workdir=runs/synthetic --split=dev    # tunes post-processing
    python -m launch.evaluate --workdir=runs/synthetic --split=test   # applies it

Restores the model only (any number of devices), predicts every recording of the split whole
and prints markdown tables per task (ccc_concat, ccc_seq_mean, pcc, rmse); the same numbers go
to `<workdir>/eval_<split>_step<step>.json`. `--split=dev` tunes the post-processing (delay,
smoothing, scale, bias; each kept only if dev CCC rises) and saves it in
`<workdir>/postprocess.json` for this checkpoint step; `--split=test` applies it unchanged and
fails if dev was not evaluated first. A split without labels (RECOLA test) gets its
post-processed predictions written as CSV under `<workdir>/predictions/` instead of a table.
With several seeds, the tables score their ensemble (the mean of the seeds' predictions), and
one more table gives the mean over seeds of each seed's own scores.

The dataset is the one the run trained on (saved with the checkpoint); `--data_dir` reads it
from elsewhere. Exit status 1 with one line for a missing checkpoint, dataset or
post-processing.
"""

from absl import app
from absl import flags

from launch import cli
from launch import text

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_SPLIT = flags.DEFINE_enum('split', None, ['dev', 'test'],
                           'dev tunes and saves post-processing; test applies it.', required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Where the prepared dataset is, if not where training read it.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  from ccc_jax import evaluation  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors('evaluate'):
    result = evaluation.evaluate_split(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value,
                                       _DATA_DIR.value)
  print(text.evaluation(result))


if __name__ == '__main__':
  cli.run(main, 'evaluate')
