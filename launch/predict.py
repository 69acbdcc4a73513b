r"""Predicts emotion traces for one recording with a trained checkpoint.

    python -m launch.predict --workdir=runs/synthetic --audio=talk.wav --output=talk.csv \
        [--mocap=talk_mocap.csv] [--plot=talk.png] [--labels=talk_gold.csv] [--checkpoint=best]

Audio: any format, sample rate and channel count soundfile reads, of any length (windows are
predicted in batches and log-mel features computed per batch, so memory beyond the 16 kHz
waveform stays bounded). A model trained with mocap needs `--mocap`, a CSV with header
`time,<marker>_x,<marker>_y,<marker>_z,...` (see ccc_jax.formats.read_mocap_csv), with the
markers of the training data in the same order.

Output: CSV with header `time,<task>,...`, one row per 40 ms label frame; `time` is the frame's
start in seconds (0.00, 0.04, ...). With several seeds the prediction is their ensemble (the
mean of the seeds' predictions). The post-processing tuned on dev for the checkpoint
(`python -m launch.evaluate --split=dev`) is applied when there is one, unless
`--postprocess=false`.

`--labels`: a gold standard in the output's format (header `time,<task>,...`, times in seconds,
increasing, any rate; an empty field is a missing value; columns for tasks the model does not
predict are ignored). It is drawn in the plot, and the CCC of each task over the frames the
labels span (gold linearly interpolated to the frame starts) is printed.

Exit status 1 with a message naming the file for a missing, unreadable or empty input, a model
that needs mocap run without it, or an unknown checkpoint.
"""

from absl import app
from absl import flags

from launch import cli
from launch import text

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_AUDIO = flags.DEFINE_string('audio', None, 'Audio file of the recording.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'CSV to write the traces to.', required=True)
_MOCAP = flags.DEFINE_string('mocap', None, 'Mocap CSV, for a model trained with mocap.')
_PLOT = flags.DEFINE_string('plot', None, 'PNG to draw the traces in (and the labels).')
_LABELS = flags.DEFINE_string('labels', None, 'Gold-standard CSV `time,<task>,...` to compare.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_POSTPROCESS = flags.DEFINE_bool('postprocess', True,
                                 'Apply the post-processing tuned on dev, when there is one.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  from ccc_jax import inference  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors('predict'):
    summary = inference.predict_recording(
        _WORKDIR.value, _AUDIO.value, _OUTPUT.value, mocap=_MOCAP.value, plot=_PLOT.value,
        labels=_LABELS.value, checkpoint=_CHECKPOINT.value,
        use_postprocessing=_POSTPROCESS.value)
  print(text.prediction(summary))


if __name__ == '__main__':
  cli.run(main, 'predict')
