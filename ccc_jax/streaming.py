"""Live prediction: a causal model applied to audio (and mocap) as it arrives, frame by frame.

Owns `CausalRunner` (a causal model's `AVDNet.stream` over normalised inputs, block by block,
with its state carried) and `StreamingPredictor` (raw chunks of any size in, the AVD frames that
became final out). The one definition of a causal run's prediction of a recording: frame t is
the model's last output over the training window (W frames, 4 s by default) ending at t, the
GRU starting at zeros at the window's start as in training, the branches seeing their real past
(the convolutions' and the log-mel windows' context). Measured on dev it beats carrying the GRU
state over the whole recording (BUILD_NOTES.md "Live prediction"). The offline paths
(`inference.Predictor`, `launch.predict`, `evaluation.predict_split`) compute exactly this,
through `CausalRunner`, so a stream and an offline prediction of the same recording agree to
float32 rounding whatever the chunking.

The state between calls is explicit and small (`StreamingPredictor.state_bytes`): soxr's
resampler state when the input is not 16 kHz, the raw samples of the frame in progress and of
the one before (the log-mel windows reach 240 samples back), the normalised raw-audio context of
the convolutions (850 samples for the default branch), the fused per-frame representations of
the last W - 1 frames per seed, and the mocap feature stream's per-marker state
(`features.MocapFeatureStream`).

A frame is final once the audio up to its end has arrived and, for a model with mocap, the mocap
frame at or after its end (mocap features interpolate to the frame's end). Post-processing that
needs the future (a delay shift, centred smoothing) cannot apply live; a causal run tunes only
scale and bias on dev (`evaluation.evaluate_split`), and the stream applies them when tuned.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

from flax import nnx
import jax
import numpy as np
import soxr

from ccc_jax import audio_io
from ccc_jax import checkpoints
from ccc_jax import features
from ccc_jax import input_pipeline
from ccc_jax import postprocess
from ccc_jax.errors import CheckpointError, DataError

# Frames per model call: the smallest that holds what is ready, so a live stream (one frame per
# 40 ms) computes one frame while a file is run 64 frames at a time; three compiled programs.
BLOCK_SIZES = (1, 8, 64)


@functools.partial(jax.jit, static_argnums=0)
def _stream_block(graphdef, params, history, known, inputs, num_valid):
  """`([seeds, 1, n, tasks], history, known)` of one block, every seed (stacked) at once."""
  def one_seed(seed_params, seed_history):
    return nnx.merge(graphdef, seed_params).stream(inputs, seed_history, known, num_valid)
  predicted, history, known = jax.vmap(one_seed)(params, history)
  return predicted, history, known[0]


class MocapRateMissing(ValueError):
  """A model with mocap was streamed without a mocap rate."""


def require_causal(model: checkpoints.RestoredModel) -> None:
  if not model.config.model.causal:
    raise CheckpointError(
        f'{model.workdir}: its model is bidirectional (model.causal is false): it needs the '
        'whole recording and cannot be streamed; train with the causal variant '
        '(--config=...:causal) to stream')


class CausalRunner:
  """A causal model run over normalised inputs, block by block, with its state carried.

  `state` is `(audio_context [C], history [seeds, 1, W - 1, trunk_width], known)`: the
  normalised raw-audio samples the convolutions still need, the fused representations of the
  last W - 1 frames (W: the training window) and how many of those are real. `run(state,
  inputs)` takes the next n frames (`audio` `[n * 640]`, `logmel` `[4 n, 40]`, `mocap`
  `[n, D]`, normalised, as the model's modalities need) and returns `(state, [seeds, n, tasks])`.
  """

  def __init__(self, graphdef, params, modalities, window: int):
    self.graphdef, self.params = graphdef, params
    self.modalities = tuple(modalities)
    self.window = int(window)
    self.num_seeds = jax.tree.leaves(params)[0].shape[0]
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params))
    if not getattr(model, 'causal', False):
      raise ValueError('CausalRunner needs a causal model')
    self.audio_context = model.audio_context
    self._history_shape = (self.num_seeds, 1, self.window - 1, model.trunk_width)
    self._dims = {name: getattr(model.branches[name], 'feature_dim', None)
                  for name in self.modalities}

  def initial_state(self):
    # On the parameters' device from the start: the program's outputs are, and an argument
    # placed differently from one call to the next would compile the program again.
    device = jax.tree.leaves(self.params)[0].sharding
    return (np.zeros((self.audio_context,), np.float32),
            jax.device_put(np.zeros(self._history_shape, np.float32), device),
            jax.device_put(np.int32(0), device))

  def compile(self) -> None:
    """Compiles the program of every block size now, so that no live frame waits for it."""
    state = self.initial_state()
    for size in BLOCK_SIZES:
      inputs = {name: np.zeros((size * self._rows_per_frame(name),)
                               + (() if name == 'audio' else (self._dims[name],)), np.float32)
                for name in self.modalities}
      self.run(state, inputs)

  def run(self, state, inputs: Mapping[str, np.ndarray]):
    audio_context, history, known = state
    num_frames = self._num_frames(inputs)
    outputs = []
    done = 0
    while done < num_frames:
      n = min(num_frames - done, BLOCK_SIZES[-1])
      block = next(size for size in BLOCK_SIZES if size >= n)
      batch = {}
      for name in self.modalities:
        per_frame = self._rows_per_frame(name)
        rows = np.asarray(inputs[name][done * per_frame:(done + n) * per_frame], np.float32)
        if name == 'audio':
          rows = np.concatenate([audio_context, rows])
          audio_context = rows[rows.shape[0] - self.audio_context:]
        pad = [(0, (block - n) * per_frame)] + [(0, 0)] * (rows.ndim - 1)
        batch[name] = np.pad(rows, pad)[None]
      predicted, history, known = _stream_block(self.graphdef, self.params, history, known,
                                                batch, np.int32(n))
      outputs.append(np.asarray(predicted)[:, 0, :n])
      done += n
    if not outputs:
      return (audio_context, history, known), np.zeros((self.num_seeds, 0, 0), np.float32)
    return (audio_context, history, known), np.concatenate(outputs, axis=1)

  def run_whole(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """`[seeds, frames, tasks]` of one recording from its start."""
    return self.run(self.initial_state(), inputs)[1]

  def _rows_per_frame(self, name: str) -> int:
    return {'audio': features.SAMPLES_PER_FRAME, 'logmel': features.LOGMEL_PER_FRAME}.get(name, 1)

  def _num_frames(self, inputs) -> int:
    counts = {name: inputs[name].shape[0] // self._rows_per_frame(name) for name in self.modalities}
    if len(set(counts.values())) != 1:
      raise ValueError(f'the modalities disagree on the number of frames: {counts}')
    return next(iter(counts.values()))


@dataclasses.dataclass(frozen=True)
class Frames:
  """Frames that became final: `times` `[n]` (seconds, each frame's start; frame i covers
  [i / 25, (i + 1) / 25) s) and `values` `[n, tasks]` (float32)."""
  times: np.ndarray
  values: np.ndarray

  def __len__(self) -> int:
    return self.times.shape[0]


class StreamingPredictor:
  """A trained causal run applied to a live stream.

  Usage:

      stream = StreamingPredictor.load('runs/causal', sample_rate=44100)
      for chunk in chunks:                      # any sizes: one sample to minutes
        frames = stream.push(chunk)             # the frames that became final, maybe none
        ...
      frames = stream.flush()                   # the rest; the stream is then finished

  `push` takes audio `[samples]` or `[samples, channels]` at the stream's `sample_rate` (floats
  at full scale 1.0, or integer PCM), and for a model with mocap the marker positions that
  arrived, `[mocap frames, markers, 3]` at `mocap_rate` (NaN where a marker was not seen). The
  values are the seeds' ensemble, with the causal post-processing tuned on dev (scale, bias)
  when there is one and `use_postprocessing` is true.
  """

  def __init__(self, model: checkpoints.RestoredModel, *, sample_rate: int = audio_io.SAMPLE_RATE,
               mocap_rate: float | None = None,
               postprocessing: postprocess.PostProcessing | None = None):
    require_causal(model)
    if int(sample_rate) != sample_rate or sample_rate <= 0:
      raise DataError(f'sample rate must be a positive whole number, got {sample_rate}')
    if postprocessing is not None:
      needs_future = {task: steps.kept for task, steps in postprocessing.per_task.items()
                      if set(steps.kept) & {'delay', 'smoothing'}}
      if needs_future:
        raise ValueError(f'post-processing steps {needs_future} need the future; a stream can '
                         'apply scale and bias only')
    self.model = model
    self.postprocessing = postprocessing
    self.sample_rate = int(sample_rate)
    self.needs_mocap = 'mocap' in model.modalities
    if self.needs_mocap and (mocap_rate is None or not mocap_rate > 0):
      raise MocapRateMissing(f'this model uses mocap (it was trained on '
                             f'{", ".join(model.modalities)}): the stream needs the mocap and its '
                             f'rate, got mocap_rate={mocap_rate}')
    self.mocap_rate = None if mocap_rate is None else float(mocap_rate)
    self._runner = CausalRunner(model.graphdef, model.params, model.modalities, model.info.window)
    # Before the stream starts, so that no frame waits: compile the programs, make the filters.
    self._runner.compile()
    if 'logmel' in model.modalities:
      features.log_mel(np.zeros((features.SAMPLES_PER_FRAME,), np.float32))
    self._state = self._runner.initial_state()
    self._resampler = (None if self.sample_rate == audio_io.SAMPLE_RATE else
                       soxr.ResampleStream(self.sample_rate, audio_io.SAMPLE_RATE, 1,
                                           dtype='float32', quality='HQ'))
    self._samples_in = 0  # input samples pushed, at the input rate
    self._samples_16k = 0  # 16 kHz samples produced
    self._previous = np.zeros((features.SAMPLES_PER_FRAME,), np.float32)  # raw, frame before
    self._pending = np.zeros((0,), np.float32)  # raw 16 kHz samples of frames not yet predicted
    self._mocap = None
    if self.needs_mocap:  # mocap_feature_dim(M) = 6 M + 3
      num_markers = (model.info.input_dims['mocap'] - 3) // 6
      self._mocap = features.MocapFeatureStream(self.mocap_rate, num_markers)
    self._mocap_ready = np.zeros((0, model.info.input_dims.get('mocap', 0)), np.float32)
    self._emitted = 0
    self._finished = False

  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = 'best', *,
           sample_rate: int = audio_io.SAMPLE_RATE, mocap_rate: float | None = None,
           use_postprocessing: bool = True) -> 'StreamingPredictor':
    model = checkpoints.restore_model(workdir, checkpoint)
    postprocessing = postprocess.load(workdir, model.step) if use_postprocessing else None
    return cls(model, sample_rate=sample_rate, mocap_rate=mocap_rate,
               postprocessing=postprocessing)

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.model.tasks

  @property
  def label_rate(self) -> int:
    return self.model.info.label_rate

  @property
  def frames_emitted(self) -> int:
    return self._emitted

  @property
  def state_bytes(self) -> int:
    """Bytes of the state carried between calls (arrays; soxr's own state not counted)."""
    arrays = [*self._state, self._previous, self._pending, self._mocap_ready]
    mocap = 0 if self._mocap is None else sum(
        value.nbytes for value in vars(self._mocap).values() if isinstance(value, np.ndarray))
    return int(sum(np.asarray(a).nbytes for a in arrays) + mocap)

  def push(self, audio=None, mocap=None) -> Frames:
    """Adds the audio (and mocap) that arrived; returns the frames that became final."""
    if self._finished:
      raise ValueError('the stream was flushed; start a new StreamingPredictor')
    if audio is not None:
      self._add_audio(self._mono(audio), last=False)
    if mocap is not None:
      self._add_mocap(mocap)
    return self._predict_ready()

  def flush(self) -> Frames:
    """Ends the stream: the partial last frame (zero-padded) and any frame waiting for mocap."""
    if self._finished:
      raise ValueError('the stream was already flushed')
    self._add_audio(np.zeros((0,), np.float32), last=True)
    if self._samples_16k == 0:
      raise DataError('the stream received no audio')
    self._finished = True
    num_frames = features.num_label_frames(self._samples_16k)
    if self.needs_mocap:
      received = self._mocap.num_mocap_frames / self.mocap_rate
      seconds = num_frames / self.label_rate
      if abs(received - seconds) > features.LENGTH_TOLERANCE_S:
        raise DataError(f'the stream\'s mocap lasts {received:.2f} s but its audio {seconds:.2f} '
                        f's; they must agree within {features.LENGTH_TOLERANCE_S} s')
      rest = self._mocap.finish(num_frames)
      self._mocap_ready = np.concatenate([self._mocap_ready, self._normalised('mocap', rest)])
    missing = num_frames * features.SAMPLES_PER_FRAME - (self._emitted * features.SAMPLES_PER_FRAME
                                                         + self._pending.shape[0])
    self._pending = np.concatenate([self._pending, np.zeros((missing,), np.float32)])
    return self._predict_ready()

  # -------------------------------------------------------------------------------------------

  def _mono(self, audio) -> np.ndarray:
    audio = audio_io.mix_down(audio_io.pcm_to_float(audio))
    if audio.ndim != 1:
      raise DataError(f'audio chunk must be [samples] or [samples, channels], got shape '
                      f'{audio.shape}')
    if not np.all(np.isfinite(audio)):
      raise DataError(f'audio chunk contains NaN or infinite samples (after '
                      f'{self._samples_in / self.sample_rate:.3f} s of stream)')
    return audio

  def _add_audio(self, audio: np.ndarray, last: bool) -> None:
    self._samples_in += audio.shape[0]
    if self._resampler is not None:
      audio = self._resampler.resample_chunk(audio, last=last)
      if last:  # as librosa.resample: ceil(n * 16000 / rate) samples, zero-padded at the end
        expected = -(-self._samples_in * audio_io.SAMPLE_RATE // self.sample_rate)
        short = expected - (self._samples_16k + audio.shape[0])
        if short > 0:
          audio = np.concatenate([audio, np.zeros((short,), np.float32)])
    self._samples_16k += audio.shape[0]
    self._pending = np.concatenate([self._pending, np.asarray(audio, np.float32)])

  def _add_mocap(self, positions) -> None:
    if not self.needs_mocap:
      return  # a model without mocap ignores it, as Predictor does
    positions = np.asarray(positions, np.float32)
    if positions.ndim != 3 or positions.shape[-1] != 3:
      raise DataError(f'mocap chunk must be [frames, markers, 3], got shape {positions.shape}')
    expected = self.model.info.input_dims['mocap']
    got = features.mocap_feature_dim(positions.shape[1])
    if got != expected:
      raise DataError(f'mocap chunk: {positions.shape[1]} markers give {got} features per frame; '
                      f'the model was trained on {expected}')
    rows = self._mocap.push(positions)
    self._mocap_ready = np.concatenate([self._mocap_ready, self._normalised('mocap', rows)])

  def _normalised(self, name: str, rows: np.ndarray) -> np.ndarray:
    return input_pipeline.normalise({name: rows}, self.model.info.stats, (name,))[name]

  def _predict_ready(self) -> Frames:
    per_frame = features.SAMPLES_PER_FRAME
    ready = self._pending.shape[0] // per_frame
    if self.needs_mocap:
      ready = min(ready, self._mocap_ready.shape[0])
    if ready == 0:
      return self._frames(np.zeros((0, len(self.tasks)), np.float32))
    raw = self._pending[:ready * per_frame]
    inputs: dict[str, Any] = {}
    if 'audio' in self.model.modalities:
      inputs['audio'] = self._normalised('audio', audio_io.as_stored(raw))
    if 'logmel' in self.model.modalities:
      # The frame before gives the log-mel windows their 240 samples of the past.
      rows = features.log_mel(np.concatenate([self._previous, raw]), num_frames=ready + 1)
      inputs['logmel'] = self._normalised('logmel', rows[features.LOGMEL_PER_FRAME:])
    if self.needs_mocap:
      inputs['mocap'] = self._mocap_ready[:ready]
      self._mocap_ready = self._mocap_ready[ready:]
    self._previous = raw[raw.shape[0] - per_frame:].copy()
    self._pending = self._pending[ready * per_frame:].copy()
    self._state, predicted = self._runner.run(self._state, inputs)
    values = np.mean(predicted, axis=0, dtype=np.float64).astype(np.float32)  # the ensemble
    if self.postprocessing is not None:
      values = self.postprocessing.apply(values).astype(np.float32)
    return self._frames(values)

  def _frames(self, values: np.ndarray) -> Frames:
    first = self._emitted
    self._emitted += values.shape[0]
    return Frames(np.arange(first, self._emitted) / self.label_rate, values)
