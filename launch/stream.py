r"""Streams audio (and mocap) through a trained causal model, printing each frame once it is final.

    python -m launch.stream --workdir=runs/causal --audio=talk.wav [--mocap=talk_mocap.csv] [--fast]
    arecord -q -f S16_LE -r 16000 -c 1 | python -m launch.stream --workdir=runs/causal \
        --stdin --sample_rate=16000

Output on stdout, flushed line by line so another program can read it live: the header
`time,<task>,...`, then one line per 40 ms frame as soon as it is final (`time` is the frame's
start in seconds), the seeds' ensemble with the causal post-processing tuned on dev (scale and
bias) unless `--postprocess=false`. A file is streamed in real time, `--chunk_ms` at a time
(`--fast`: as fast as it computes); `--stdin` reads raw little-endian 16-bit PCM
(`--channels` interleaved channels at `--sample_rate`) until end of input. The run must be
causal (trained with the `causal` variant); a bidirectional one is refused by name.
"""

import sys
import time

from absl import app
from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The causal training run\'s workdir.',
                               required=True)
_AUDIO = flags.DEFINE_string('audio', None, 'Audio file to stream (any format soundfile reads).')
_STDIN = flags.DEFINE_bool('stdin', False, 'Read raw 16-bit little-endian PCM from stdin.')
_SAMPLE_RATE = flags.DEFINE_integer('sample_rate', None, 'Samples per second of --stdin.')
_CHANNELS = flags.DEFINE_integer('channels', 1, 'Interleaved channels of --stdin.')
_MOCAP = flags.DEFINE_string('mocap', None, 'Mocap CSV streamed beside --audio, for a model '
                             'trained with mocap.')
_FAST = flags.DEFINE_bool('fast', False, 'Stream a file as fast as possible, not in real time.')
_CHUNK_MS = flags.DEFINE_float('chunk_ms', 40.0, 'Milliseconds of a file pushed at a time.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_POSTPROCESS = flags.DEFINE_bool('postprocess', True,
                                 'Apply the causal post-processing tuned on dev, when there is one.')


def _print_frames(frames) -> None:
  from ccc_jax import formats  # pylint: disable=g-import-not-at-top
  for time_s, values in zip(frames.times, frames.values):
    print(formats.traces_csv_row(time_s, values), flush=True)


def _stream_file(stream, audio_path: str, take, chunk_ms: float, fast: bool) -> None:
  """Pushes the file `chunk_ms` at a time (and the mocap `take` up to the audio's time)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile  # pylint: disable=g-import-not-at-top
  from ccc_jax import audio_io  # pylint: disable=g-import-not-at-top
  from ccc_jax.errors import DataError  # pylint: disable=g-import-not-at-top
  info = audio_io.audio_info(audio_path)
  take = take if stream.needs_mocap else None
  block = max(int(round(info.sample_rate * chunk_ms / 1000.0)), 1)
  start, pushed, mocap_sent = time.monotonic(), 0, 0
  try:
    blocks = soundfile.blocks(audio_path, blocksize=block, dtype='float32', always_2d=True)
    for chunk in blocks:
      if not np.all(np.isfinite(chunk)):
        raise DataError(f'{audio_path}: audio contains NaN or infinite samples (near '
                        f'{pushed / info.sample_rate:.2f} s)')
      pushed += chunk.shape[0]
      mocap = None
      if take is not None:  # the mocap frames up to the audio's time
        due = min(int(np.floor(pushed / info.sample_rate * take.rate)) + 1,
                  take.positions.shape[0])
        mocap, mocap_sent = take.positions[mocap_sent:due], max(due, mocap_sent)
      _print_frames(stream.push(chunk, mocap))
      if not fast:
        ahead = pushed / info.sample_rate - (time.monotonic() - start)
        if ahead > 0:
          time.sleep(ahead)
  except (RuntimeError, soundfile.LibsndfileError) as error:
    raise DataError(f'{audio_path}: cannot read the audio ({error})') from None
  if take is not None and mocap_sent < take.positions.shape[0]:
    _print_frames(stream.push(None, take.positions[mocap_sent:]))


def _stream_stdin(stream, channels: int) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  frame_bytes = 2 * channels
  leftover = b''
  reader = sys.stdin.buffer
  while True:
    data = reader.read1(65536) if hasattr(reader, 'read1') else reader.read(65536)
    if not data:
      break
    data = leftover + data
    usable = len(data) - len(data) % frame_bytes
    data, leftover = data[:usable], data[usable:]
    if data:
      samples = np.frombuffer(data, dtype='<i2').reshape(-1, channels)
      _print_frames(stream.push(samples))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _STDIN.value == (_AUDIO.value is not None):
    cli.fail('stream', 'give either --audio=FILE or --stdin (with --sample_rate)')
  if _STDIN.value and not _SAMPLE_RATE.value:
    cli.fail('stream', '--stdin needs --sample_rate (the PCM carries no header)')
  if _STDIN.value and _MOCAP.value:
    cli.fail('stream', '--mocap streams beside --audio only (stdin carries audio)')
  if _CHANNELS.value < 1 or not _CHUNK_MS.value > 0:
    cli.fail('stream', '--channels and --chunk_ms must be positive')
  cli.quiet_logging()
  from ccc_jax import audio_io, formats, streaming  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors('stream'):
    take = formats.read_mocap_csv(_MOCAP.value) if _MOCAP.value else None
    sample_rate = (_SAMPLE_RATE.value if _STDIN.value else
                   audio_io.audio_info(_AUDIO.value).sample_rate)
    try:
      model_stream = streaming.StreamingPredictor.load(
          _WORKDIR.value, _CHECKPOINT.value, sample_rate=sample_rate,
          mocap_rate=None if take is None else take.rate, use_postprocessing=_POSTPROCESS.value)
    except streaming.MocapRateMissing as error:
      cli.fail('stream', f'{error}: give --audio and --mocap=FILE.csv')
    print(formats.traces_csv_header(model_stream.tasks), flush=True)
    try:
      if _STDIN.value:
        _stream_stdin(model_stream, _CHANNELS.value)
      else:
        _stream_file(model_stream, _AUDIO.value, take, _CHUNK_MS.value, _FAST.value)
      _print_frames(model_stream.flush())
    except BrokenPipeError:  # the reader went away: nothing more to say
      sys.stderr.close()
      sys.exit(0)


if __name__ == '__main__':
  cli.run(main, 'stream')
