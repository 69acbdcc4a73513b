"""Simulator of the synthetic_avd corpus: latent emotion, speakers, speech, mocap and raters.

Owns how every synthetic signal is made from the latent activation (A), valence (V) and
dominance (D) traces, so that the builder, the tests and the oracle figures in
datasets/README.md share one definition. Everything is deterministic given (seed, speaker,
session): each component draws from its own seeded random stream, so the latents and ratings
of a session can be regenerated without synthesising its audio.

What drives what (e = the speaker's expressiveness, 0.7-1.3):
  audio   pitch       +3.5 e A, +1.0 e V, -1.5 e D semitones around the speaker's base pitch
          pitch range (intonation) widens with A
          loudness    +6 e A, +3 e D dB around the speaker's base level
          rate        syllables/s x 2^(0.35 e A); pauses shorter and phrases longer with A
          tilt        brighter spectrum (weaker source low-pass) with A
          valence     only subtle cues: +1 semitone, formants x (1 + 0.04 e V) (smiling),
                      less breathiness; so V is much harder to hear than A
  mocap   energy      gesture amplitude and speed x exp(e A) (arms, head nods, sway)
          valence     head raised (+12 e V degrees), shoulders up and back (vs. slumped)
          dominance   arms held out (+20 e D degrees abduction), wider stance, lean forward
  speaker base pitch (sex), level, rate, tilt, vocal-tract length, height, shoulder width,
          resting posture and gesture style: a model must generalise across speakers.
  raters  6 per dimension, each with a 1-3 s reaction delay, 0.2-0.8 s smoothing, a scale,
          an offset and slow noise (more noise for V and D than for A); the gold standard is
          their mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage
import scipy.signal

from ccc_jax import postprocess
from ccc_jax.features import LABEL_RATE
from ccc_jax.features import SAMPLE_RATE
from ccc_jax.metrics import concordance_cc, concordance_cc_per_column

TASKS = ('activation', 'valence', 'dominance')
MARKERS = ('HEAD_TOP', 'HEAD_FRONT', 'NECK', 'CHEST', 'PELVIS',
           'L_SHOULDER', 'R_SHOULDER', 'L_ELBOW', 'R_ELBOW', 'L_WRIST', 'R_WRIST',
           'L_HIP', 'R_HIP', 'L_KNEE', 'R_KNEE', 'L_ANKLE', 'R_ANKLE')

# Correlation of the latent processes (A, V, D): aroused speakers tend to be more dominant,
# slightly more positive.
_LATENT_CORRELATION = np.array([[1.0, 0.3, 0.45],
                                [0.3, 1.0, 0.15],
                                [0.45, 0.15, 1.0]])
_LATENT_TIMESCALE_S = np.array([2.5, 3.5, 3.0])  # Gaussian smoothing width per dimension
_RATER_NOISE = np.array([0.25, 0.4, 0.35])  # valence and dominance are harder to rate
# Speech RMS at the speaker's base level.
_REFERENCE_RMS = 0.05
# Vowel formants (F1, F2, F3) of an adult male voice, Hz.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                    [530, 1840, 2480], [570, 840, 2410]], dtype=np.float64)
_FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 120.0])

# Random stream ids: each component of a session has its own stream.
_STREAM_PROFILE, _STREAM_LATENT, _STREAM_AUDIO, _STREAM_MOCAP, _STREAM_RATINGS = range(5)
_STREAM_PANEL = 1000


def _rng(*keys: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in keys])


def _smooth_noise(rng: np.random.Generator, num: int, sigma: float, dims: int = 1) -> np.ndarray:
  """Gaussian-smoothed white noise [num, dims] with unit variance (sigma in samples)."""
  pad = int(4 * sigma) + 1
  white = rng.standard_normal((num + 2 * pad, dims))
  smooth = scipy.ndimage.gaussian_filter1d(white, sigma, axis=0, mode='wrap')[pad:pad + num]
  return smooth * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)  # the filter's gain on unit white noise


@dataclasses.dataclass(frozen=True)
class SpeakerProfile:
  """A speaker's own baseline voice and body, independent of emotion."""
  female: bool
  f0: float  # Hz
  level_db: float
  syllable_rate: float  # syllables per second
  tilt: float
  formant_scale: float
  breathiness: float
  expressiveness: float
  height: float  # mm
  shoulder_width: float  # mm
  lean: float  # degrees forward
  head_pitch: float  # degrees up
  abduction: float  # degrees
  elbow: float  # degrees
  gesture_scale: float


def speaker_profile(seed: int, speaker: int) -> SpeakerProfile:
  rng = _rng(seed, speaker, _STREAM_PROFILE)
  female = speaker % 2 == 1
  height = rng.uniform(1550, 1750) if female else rng.uniform(1680, 1900)
  return SpeakerProfile(
      female=female,
      f0=rng.uniform(180, 240) if female else rng.uniform(95, 135),
      level_db=rng.uniform(-4, 4),
      syllable_rate=rng.uniform(3.6, 5.0),
      tilt=rng.uniform(-0.1, 0.1),
      formant_scale=(1.15 if female else 1.0) * rng.uniform(0.96, 1.04),
      breathiness=rng.uniform(0.02, 0.08),
      expressiveness=rng.uniform(0.7, 1.3),
      height=height,
      shoulder_width=height * rng.uniform(0.2, 0.24),
      lean=rng.uniform(-4, 4),
      head_pitch=rng.uniform(-6, 6),
      abduction=rng.uniform(8, 18),
      elbow=rng.uniform(50, 80),
      gesture_scale=rng.uniform(0.6, 1.4),
  )


def latents(seed: int, speaker: int, session: int, num_frames: int) -> np.ndarray:
  """Latent (A, V, D) at 25 Hz, float64 [num_frames, 3] in (-1, 1): smooth, partly correlated.

  Each session also has its own mean mood (an offset per dimension), so recordings differ in
  level as well as in their ups and downs.
  """
  rng = _rng(seed, speaker, session, _STREAM_LATENT)
  independent = np.concatenate(
      [_smooth_noise(rng, num_frames, scale * LABEL_RATE) for scale in _LATENT_TIMESCALE_S],
      axis=1)
  mixed = independent @ np.linalg.cholesky(_LATENT_CORRELATION).T
  offset = rng.normal(0.0, 0.35, size=3)
  return np.tanh(offset + 0.7 * mixed)


@dataclasses.dataclass(frozen=True)
class RaterPanel:
  """Per dimension, per rater: delay (s), smoothing time constant (s), scale, offset."""
  delay: np.ndarray  # [3, raters]
  smoothing: np.ndarray
  scale: np.ndarray
  offset: np.ndarray


def rater_panel(seed: int, num_raters: int) -> RaterPanel:
  """The corpus' raters: the same people rate every session."""
  rng = _rng(seed, _STREAM_PANEL)
  shape = (3, num_raters)
  return RaterPanel(delay=rng.uniform(1.0, 3.0, shape), smoothing=rng.uniform(0.2, 0.8, shape),
                    scale=rng.uniform(0.75, 1.15, shape), offset=rng.normal(0.0, 0.08, shape))


def _rater_view(latent: np.ndarray, delay_s: float, smoothing_s: float) -> np.ndarray:
  """What a rater tracks: the latent late by the reaction delay, smoothed by a slow hand."""
  shift = int(round(delay_s * LABEL_RATE))
  delayed = np.concatenate([np.full(shift, latent[0]), latent[:len(latent) - shift]])
  decay = np.exp(-1.0 / (smoothing_s * LABEL_RATE))
  smoothed, _ = scipy.signal.lfilter([1 - decay], [1, -decay], delayed,
                                     zi=[decay * delayed[0]])
  return smoothed


def noiseless_gold(latent: np.ndarray, panel: RaterPanel) -> np.ndarray:
  """The gold standard the raters would give without their noise: [frames, 3]."""
  gold = np.zeros_like(latent)
  num_raters = panel.delay.shape[1]
  for dim in range(3):
    for rater in range(num_raters):
      view = _rater_view(latent[:, dim], panel.delay[dim, rater], panel.smoothing[dim, rater])
      gold[:, dim] += np.clip(panel.offset[dim, rater] + panel.scale[dim, rater] * view, -1, 1)
  return gold / num_raters


def ratings(seed: int, speaker: int, session: int, latent: np.ndarray,
            panel: RaterPanel) -> np.ndarray:
  """Every rater's trace, [raters, frames, 3], clipped to [-1, 1]."""
  rng = _rng(seed, speaker, session, _STREAM_RATINGS)
  num_raters = panel.delay.shape[1]
  traces = np.zeros((num_raters,) + latent.shape)
  for dim in range(3):
    for rater in range(num_raters):
      view = _rater_view(latent[:, dim], panel.delay[dim, rater], panel.smoothing[dim, rater])
      noise = _RATER_NOISE[dim] * _smooth_noise(rng, len(view), 1.0 * LABEL_RATE)[:, 0]
      traces[rater, :, dim] = np.clip(
          panel.offset[dim, rater] + panel.scale[dim, rater] * view + noise, -1, 1)
  return traces


def _polyblep_saw(phase: np.ndarray, step: np.ndarray) -> np.ndarray:
  """Band-limited sawtooth from a phase in cycles (PolyBLEP corrects the jump's aliasing)."""
  p = phase % 1.0
  saw = 2.0 * p - 1.0
  start = p < step
  x = p[start] / step[start]
  saw[start] -= 2 * x - x * x - 1
  end = p > 1.0 - step
  x = (p[end] - 1.0) / step[end]
  saw[end] -= x * x + 2 * x + 1
  return saw


def _formant_filter(formants: np.ndarray) -> np.ndarray:
  """Denominator of a cascade of two-pole resonators at `formants` Hz."""
  denominator = np.array([1.0])
  for frequency, bandwidth in zip(formants, _FORMANT_BANDWIDTHS):
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * frequency / SAMPLE_RATE
    denominator = np.convolve(denominator, [1.0, -2 * radius * np.cos(theta), radius ** 2])
  return denominator


def _envelope(num: int) -> np.ndarray:
  """Raised-cosine attack and release of 15 ms (shorter for very short segments)."""
  ramp = min(int(0.015 * SAMPLE_RATE), num // 2)
  envelope = np.ones(num)
  if ramp > 0:
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[:ramp] = rise
    envelope[num - ramp:] = rise[::-1]
  return envelope


def _rms_normalised(signal: np.ndarray) -> np.ndarray:
  return signal / (np.sqrt(np.mean(signal ** 2)) + 1e-12)


def synthesize_audio(seed: int, speaker: int, session: int, latent: np.ndarray,
                     profile: SpeakerProfile) -> np.ndarray:
  """16 kHz speech-like audio following the latents, float32 [frames * 640].

  Phrases of syllables (an optional noise consonant, then a voiced vowel: PolyBLEP glottal
  sawtooth, breath noise, spectral-tilt low-pass, three-formant resonator) separated by pauses,
  over steady background noise at a per-session SNR.
  """
  rng = _rng(seed, speaker, session, _STREAM_AUDIO)
  num_frames = latent.shape[0]
  num_samples = num_frames * (SAMPLE_RATE // LABEL_RATE)
  duration = num_samples / SAMPLE_RATE
  e = profile.expressiveness
  act, val, dom = latent[:, 0], latent[:, 1], latent[:, 2]
  pitch = 12 * np.log2(profile.f0) + e * (3.5 * act + 1.0 * val - 2.0 * dom)  # semitones
  pitch_range = 1.5 + 1.5 * e * (1 + act)
  level_db = profile.level_db + e * (6 * act + 4 * dom)
  rate = profile.syllable_rate * 2.0 ** (0.35 * e * act)
  lowpass = np.clip(0.55 + profile.tilt - 0.25 * e * act, 0.05, 0.9)
  formant_shift = profile.formant_scale * (1 + 0.04 * e * val)
  breath = np.clip(profile.breathiness - 0.04 * e * val, 0.0, 0.2)
  mean_phrase = 5 + 3 * (1 + act) + 2 * (1 + dom)  # syllables per phrase
  mean_pause = 0.8 * (1 - 0.35 * act - 0.25 * dom)  # seconds

  out = np.zeros(num_samples)
  time = rng.uniform(0.0, 0.5)
  while time < duration - 0.1:
    frame = min(int(time * LABEL_RATE), num_frames - 1)
    phrase_syllables = 1 + rng.geometric(1.0 / mean_phrase[frame])
    for syllable in range(phrase_syllables):
      frame = min(int(time * LABEL_RATE), num_frames - 1)
      length = rng.uniform(0.75, 1.25) / rate[frame]
      start = int(time * SAMPLE_RATE)
      if start >= num_samples:
        break
      gain = _REFERENCE_RMS * 10 ** (level_db[frame] / 20)
      consonant = int(length * 0.3 * SAMPLE_RATE) if rng.random() < 0.6 else 0
      if consonant:
        end = min(start + consonant, num_samples)
        noise = rng.standard_normal(end - start)
        noise = scipy.signal.lfilter([1, -0.9], [1], noise)  # fricative: high-frequency noise
        out[start:end] += 0.3 * gain * _rms_normalised(noise) * _envelope(end - start)
      vowel_start = start + consonant
      vowel_end = min(start + int(length * SAMPLE_RATE), num_samples)
      count = vowel_end - vowel_start
      if count > 16:
        declination = -1.5 * syllable / phrase_syllables
        onset = pitch[frame] + declination + rng.normal(0, 0.5) * pitch_range[frame]
        offset = onset + rng.normal(0, pitch_range[frame] / 3)
        f0 = 2.0 ** (np.linspace(onset, offset, count) / 12)
        step = f0 / SAMPLE_RATE
        source = _polyblep_saw(rng.random() + np.cumsum(step), step)
        source += breath[frame] * 4 * rng.standard_normal(count)
        coefficient = lowpass[frame]
        source = scipy.signal.lfilter([1 - coefficient], [1, -coefficient], source)
        formants = _VOWELS[rng.integers(len(_VOWELS))] * formant_shift[frame]
        voiced = scipy.signal.lfilter([1.0], _formant_filter(formants), source)
        out[vowel_start:vowel_end] += gain * _rms_normalised(voiced) * _envelope(count)
      time += length
    time += 0.15 + rng.exponential(mean_pause[frame])
  snr_db = rng.uniform(20, 35)
  background = scipy.signal.lfilter([1.0], [1, -0.7], rng.standard_normal(num_samples))
  out += _REFERENCE_RMS * 10 ** (-snr_db / 20) * _rms_normalised(background)
  return np.clip(out, -1, 1).astype(np.float32)


def _rotation_z(angle: np.ndarray) -> np.ndarray:
  """Rotation matrices [..., 3, 3] about the vertical axis."""
  c, s = np.cos(angle), np.sin(angle)
  zero, one = np.zeros_like(angle), np.ones_like(angle)
  return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1),
                   np.stack([zero, zero, one], -1)], -2)


def _unit(vectors: np.ndarray) -> np.ndarray:
  return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def synthesize_mocap(seed: int, speaker: int, session: int, latent: np.ndarray,
                     profile: SpeakerProfile, rate: float) -> np.ndarray:
  """Body-marker positions following the latents: float32 [frames, 17 markers, 3] in mm.

  A standing skeleton (x right, y forward, z up) whose posture follows valence (head, shoulder
  height) and dominance (arm abduction, stance width, forward lean), with gestures, nods and
  sway whose amplitude and speed grow with activation, turned and placed in the room at random.
  Markers carry 1.5 mm noise and drop out (NaN) for short occlusions, wrists and elbows most.
  """
  rng = _rng(seed, speaker, session, _STREAM_MOCAP)
  duration = latent.shape[0] / LABEL_RATE
  num = int(round(duration * rate))
  times = np.arange(num) / rate
  frame_times = (np.arange(latent.shape[0]) + 0.5) / LABEL_RATE
  act, val, dom = (np.interp(times, frame_times, latent[:, d]) for d in range(3))
  e, h = profile.expressiveness, profile.height
  energy = profile.gesture_scale * np.exp(e * act)

  def gesture(slow_s=0.6, fast_s=0.15):
    """Gesture trajectory: slow drifts plus quicker strokes that grow with activation."""
    slow = _smooth_noise(rng, num, slow_s * rate)[:, 0]
    fast = _smooth_noise(rng, num, fast_s * rate)[:, 0]
    return slow + (0.5 + 0.5 * np.tanh(act)) * fast

  def drift():
    """Slow posture shifts unrelated to emotion (weight shifts, settling): the nuisance."""
    return _smooth_noise(rng, num, 5.0 * rate)[:, 0]

  radians = np.deg2rad
  lean = radians(profile.lean + 5 * e * dom + 3 * drift() + 2 * energy * gesture(1.5, 0.5))
  head_pitch = radians(profile.head_pitch + 6 * e * val + 5 * drift() + 5 * energy * gesture())
  head_yaw = radians(10 * energy * gesture())
  stance = 0.05 * h + 40 * e * (1 + dom) / 2 + 30 * np.abs(drift())
  spine_length = h * (0.33 + 0.01 * e * dom + 0.006 * drift())  # dominant: drawn up tall

  sway = 25 * energy[:, None] * np.stack([gesture(2.0, 0.6), gesture(2.0, 0.6)], -1)
  pelvis = np.stack([sway[:, 0], sway[:, 1], 0.53 * h + 5 * energy * gesture(0.5, 0.2)], -1)
  spine = np.stack([np.zeros(num), np.sin(lean), np.cos(lean)], -1)
  forward = np.stack([np.zeros(num), np.cos(lean), -np.sin(lean)], -1)
  neck = pelvis + spine_length[:, None] * spine
  chest = pelvis + 0.25 * h * spine + 0.06 * h * forward
  head_tilt = lean - head_pitch  # forward tilt of the head in the sagittal plane
  head_up = np.stack([np.zeros(num), np.sin(head_tilt), np.cos(head_tilt)], -1)
  head_forward = np.stack([np.sin(head_yaw), np.cos(head_yaw) * np.cos(head_tilt),
                           -np.cos(head_yaw) * np.sin(head_tilt)], -1)
  head_top = neck + 0.13 * h * head_up
  head_front = neck + 0.07 * h * head_up + 0.1 * h * head_forward
  shoulder_lift = 15 * e * val + 10 * drift()  # slumped when negative
  shoulder_back = 12 * e * val + 8 * drift()

  markers = {'HEAD_TOP': head_top, 'HEAD_FRONT': head_front, 'NECK': neck, 'CHEST': chest,
             'PELVIS': pelvis}
  for side, sign in (('L', -1.0), ('R', 1.0)):
    shoulder = (neck - 0.03 * h * spine
                + np.stack([np.full(num, sign * profile.shoulder_width / 2),
                            -shoulder_back, shoulder_lift], -1))
    abduction = radians(np.clip(profile.abduction + 15 * e * dom + 8 * drift()
                                + 12 * energy * gesture(), 0, 85))
    flexion = radians(np.clip(15 + 25 * energy * gesture(), -20, 100))
    elbow_flex = radians(np.clip(profile.elbow + 30 * energy * gesture(), 10, 150))
    upper = _unit(np.stack([sign * np.sin(abduction) * np.cos(flexion), np.sin(flexion),
                            -np.cos(abduction) * np.cos(flexion)], -1))
    ahead = np.array([0.0, 1.0, 0.0]) - (upper @ np.array([0.0, 1.0, 0.0]))[:, None] * upper
    fore = (np.cos(elbow_flex)[:, None] * upper + np.sin(elbow_flex)[:, None] * _unit(ahead))
    elbow = shoulder + 0.19 * h * upper
    hip = pelvis + np.array([sign * 0.055 * h, 0.0, 0.0])
    foot = np.array([sign, 0.0, 0.0]) * stance[:, None]
    markers[f'{side}_SHOULDER'] = shoulder
    markers[f'{side}_ELBOW'] = elbow
    markers[f'{side}_WRIST'] = elbow + 0.15 * h * fore
    markers[f'{side}_HIP'] = hip
    markers[f'{side}_KNEE'] = hip + foot / 2 + np.array([0.0, 0.01 * h, -0.245 * h])
    markers[f'{side}_ANKLE'] = (hip * np.array([1.0, 1.0, 0.0]) + foot
                                + np.array([0.0, 0.0, 0.05 * h]))
  body = np.stack([markers[name] for name in MARKERS], axis=1)  # [num, markers, 3]

  facing = radians(rng.uniform(-30, 30) + 15 * gesture(3.0, 1.0))
  place = np.array([rng.uniform(-1000, 1000), rng.uniform(-1000, 1000), 0.0])
  positions = np.einsum('nij,nmj->nmi', _rotation_z(facing), body) + place
  positions += rng.normal(0.0, 1.5, positions.shape)
  for index, name in enumerate(MARKERS):
    occlusions_per_s = 1 / 30 if ('WRIST' in name or 'ELBOW' in name) else 1 / 120
    for _ in range(rng.poisson(occlusions_per_s * duration)):
      begin = rng.integers(num)
      positions[begin:begin + int(rng.uniform(0.1, 1.0) * rate), index] = np.nan
  return positions.astype(np.float32)


def speaker_splits(seed: int, num_speakers: int, dev_speakers: int,
                   test_speakers: int) -> dict[str, list[int]]:
  """Speaker-independent split: speaker indices per split, chosen by a seeded shuffle."""
  if num_speakers - dev_speakers - test_speakers < 1 or min(dev_speakers, test_speakers) < 1:
    raise ValueError(f'{num_speakers} speakers cannot give {dev_speakers} dev and '
                     f'{test_speakers} test speakers and at least one for training')
  order = [int(s) for s in _rng(seed, _STREAM_PANEL + 1).permutation(num_speakers)]
  return {'train': sorted(order[dev_speakers + test_speakers:]),
          'dev': sorted(order[:dev_speakers]),
          'test': sorted(order[dev_speakers:dev_speakers + test_speakers])}


def oracle_ccc(seed: int, sessions: dict[str, list[tuple[int, int]]], num_frames: int,
               num_raters: int, max_shift_s: float = 4.0) -> dict[str, dict[str, dict]]:
  """CCC with the gold standard of predictors that know the latents, per split and task.

  `latent`: the latent itself. `latent_shifted`: the latent delayed by the shift (0 to
  max_shift_s, per task) that maximises train CCC, as delay-shift post-processing would.
  `noiseless_raters`: the raters' mean without their noise (knows delays, smoothing, scales
  and offsets): the ceiling, only rater noise left unexplained. CCC over all frames of a
  split concatenated.
  """
  panel = rater_panel(seed, num_raters)
  data = {}
  for split, split_sessions in sessions.items():
    pieces = []
    for speaker, session in split_sessions:
      latent = latents(seed, speaker, session, num_frames)
      gold = ratings(seed, speaker, session, latent, panel).mean(0)
      pieces.append((latent, gold, noiseless_gold(latent, panel)))
    data[split] = pieces

  def concat(split, column, shift=0):
    if column == 0:
      return np.concatenate([postprocess.shift(latent, shift) for latent, _, _ in data[split]])
    return np.concatenate([piece[column] for piece in data[split]])

  shifts = range(int(max_shift_s * LABEL_RATE) + 1)
  train_gold = concat('train', 1)
  best_shift = np.array([max(shifts, key=lambda s: concordance_cc(train_gold[:, d],
                                                       concat('train', 0, s)[:, d]))
                         for d in range(3)])
  report = {}
  for split in data:
    gold = concat(split, 1)
    shifted = np.stack([concat(split, 0, int(best_shift[d]))[:, d] for d in range(3)], -1)
    report[split] = {
        name: dict(zip(TASKS, np.round(concordance_cc_per_column(gold, prediction), 4).tolist()))
        for name, prediction in (('latent', concat(split, 0)), ('latent_shifted', shifted),
                                 ('noiseless_raters', concat(split, 2)))}
    report[split]['best_shift_s'] = dict(zip(TASKS, (best_shift / LABEL_RATE).tolist()))
  return report
