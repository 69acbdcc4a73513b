"""eGeMAPSv02 low-level descriptors (LLDs) per 10 ms, 4 rows per label frame like log-mel.

Owns computing the 25 eGeMAPSv02 LLDs of openSMILE (the `opensmile` package, which ships the
openSMILE library and its configs and runs offline) for a 16 kHz waveform, 4 rows per 25 Hz label
frame like `features.log_mel`: `egemaps_lld` for a whole waveform, `egemaps_span` for the label
frames [begin, end) of a long recording from a slice of it. `opensmile` is imported on first use
(one `opensmile.Smile` per process), so importing this module costs nothing.

openSMILE's timing (eGeMAPSv02.conf and the gemaps/v01b includes of opensmile 2.6.0, confirmed by
moving a click through a voiced signal and seeing which output rows change): every level steps by
10 ms and output row k holds frame k of each level, frames starting at sample 160 k (framer
`frameCenterSpecial = left`, no padding). Each LLD is then smoothed by a 3-row centred moving
average (`sma3`; for the `sma3nz` ones, over the non-zero rows only, and zero stays zero), so
row k reads frames k - 1, k, k + 1. The LLDs come in two timings:

- 20 ms Hamming frames, samples [160 k, 160 k + 320), centred on 160 k + 160: loudness, alpha
  ratio, Hammarberg index, the two spectral slopes, MFCC 1-4, and the F1-F3 frequencies and
  bandwidths (LPC of the 20 ms spectrum). The spectral flux compares frames k - 1 and k, so it is
  centred 80 samples (5 ms) earlier. Jitter and shimmer come from pitch periods cut from the
  waveform starting at sample 160 k (about two periods, or the 10 ms step, whichever is longer,
  continuing from where frame k - 1 stopped), so they are centred some 60 to 180 samples after
  160 k depending on F0; they count with this group, but are zero where F0 of frame k (the 60 ms
  frame, centred 320 samples later) is unvoiced: they are 0 in row j where F0 is 0 in row j + 2.
- 60 ms Gaussian frames, samples [160 k, 160 k + 960), centred on 160 k + 480: F0 (semitones
  from 27.5 Hz, after Viterbi smoothing), HNR, H1-H2, H1-A3 and the F1-F3 amplitudes relative to
  F0.

Alignment here: `EGEMAPS_NAMES` row j of every LLD is centred on sample 160 j + 80, the middle of
the 10 ms hop [160 j, 160 j + 160) (spectral flux: 80 samples earlier, jitter/shimmer: see
above). Unlike log-mel frame j, whose window ends with its hop at 160 j + 160 (`features` is
causal), the rows are not causal: they read samples up to 160 j + 720 and the pitch smoother
looks further ahead (below), so live prediction cannot compute them as they are. To get that
alignment, openSMILE reads the waveform after `_LEFT_PAD` = 560 zero samples: row j of a 20 ms
LLD is openSMILE's row j + 3 and row j of a 60 ms LLD its row j + 1. So the smoothing of row 0
reads real (zero) frames on both sides, and rows near either end see zeros outside the waveform,
as log-mel does. With the smoothing, row j depends on samples [160 j - 240, 160 j + 400) (20 ms
group; spectral flux from 160 j - 400) and [160 j - 560, 160 j + 720) (60 ms group), and through
two stateful openSMILE components (Viterbi pitch smoothing, the jitter/shimmer period tracker;
see `egemaps_span`) on audio further away.

Cost: openSMILE runs in one thread, about 2.1 s per minute of voiced audio (126 s per hour) and
1.2 s per minute of noise (72 s per hour) on a shared AMD EPYC core (load average 1.6 on 2
cores), plus about 25 ms per call and 0.5 s for the first call (import and set-up). The audio of
a call is held by openSMILE as float32; `egemaps_span` bounds it for long recordings.
"""

from __future__ import annotations

import functools

import numpy as np

from ccc_jax import features
from ccc_jax.audio_io import SAMPLE_RATE

EGEMAPS_PER_FRAME = 4
HOP_LENGTH = features.SAMPLES_PER_FRAME // EGEMAPS_PER_FRAME  # 160 samples = 10 ms
# The 25 LLDs in openSMILE's order (the `lld` level of eGeMAPSv02.conf: the 10 energy/spectral
# LLDs smoothed with `sma3`, then the 15 frequency/voice-quality LLDs smoothed with `sma3nz`).
EGEMAPS_NAMES = (
    'Loudness_sma3', 'alphaRatio_sma3', 'hammarbergIndex_sma3', 'slope0-500_sma3',
    'slope500-1500_sma3', 'spectralFlux_sma3', 'mfcc1_sma3', 'mfcc2_sma3', 'mfcc3_sma3',
    'mfcc4_sma3', 'F0semitoneFrom27.5Hz_sma3nz', 'jitterLocal_sma3nz', 'shimmerLocaldB_sma3nz',
    'HNRdBACF_sma3nz', 'logRelF0-H1-H2_sma3nz', 'logRelF0-H1-A3_sma3nz', 'F1frequency_sma3nz',
    'F1bandwidth_sma3nz', 'F1amplitudeLogRelF0_sma3nz', 'F2frequency_sma3nz',
    'F2bandwidth_sma3nz', 'F2amplitudeLogRelF0_sma3nz', 'F3frequency_sma3nz',
    'F3bandwidth_sma3nz', 'F3amplitudeLogRelF0_sma3nz')
NUM_EGEMAPS = len(EGEMAPS_NAMES)  # 25
# LLDs read from the 60 ms frames (centred 480 samples after their start); all others from the
# 20 ms frames (centred 160 samples after), see the module docstring.
LONG_WINDOW_NAMES = (
    'F0semitoneFrom27.5Hz_sma3nz', 'HNRdBACF_sma3nz', 'logRelF0-H1-H2_sma3nz',
    'logRelF0-H1-A3_sma3nz', 'F1amplitudeLogRelF0_sma3nz', 'F2amplitudeLogRelF0_sma3nz',
    'F3amplitudeLogRelF0_sma3nz')
_IS_LONG = np.array([name in LONG_WINDOW_NAMES for name in EGEMAPS_NAMES])

# Zeros before sample 0: openSMILE's row k of the 20 ms LLDs is centred on padded sample
# 160 k + 160 = original sample 160 (k - 3) + 80, of the 60 ms LLDs on 160 k + 480 =
# 160 (k - 1) + 80. One more step than the minimum (400 samples) gives row 0's smoothing a frame
# before it, so row 0 is computed like every other row.
_LEFT_PAD = 560
_SHORT_SHIFT = (_LEFT_PAD + HOP_LENGTH // 2 - 160) // HOP_LENGTH  # 3
_LONG_SHIFT = (_LEFT_PAD + HOP_LENGTH // 2 - 480) // HOP_LENGTH  # 1
# Zeros after the audio that is read: openSMILE makes floor((N - 960) / 160) + 2 rows of N
# samples, so this leaves 6 rows past the last one used (smoothing reads one more; appending more
# zeros was checked to change none of the rows used).
_RIGHT_PAD = 1600

# Label frames of real audio read on each side of the requested frames (`egemaps_span`, and
# `egemaps_lld` after its `num_frames`): the windows and smoothing reach 560 samples past a label
# frame, the Viterbi pitch smoother's look-ahead 6960 samples (10.9 label frames); see
# `egemaps_span`.
MARGIN_FRAMES = 12  # 0.48 s
# How far `egemaps_span` reaches back for the start of a voiced stretch (jitter and shimmer).
MAX_LOOKBACK_FRAMES = 250  # 10 s
# Rows after a slice's start before its F0 can be trusted to be the whole computation's: the
# 60 ms window and the smoothing reach 4 rows back, plus time for the Viterbi paths to merge.
_SETTLE_ROWS = 12
_F0_COLUMN = EGEMAPS_NAMES.index('F0semitoneFrom27.5Hz_sma3nz')


@functools.cache
def _smile():
  try:
    import opensmile  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError('eGeMAPS features need the opensmile package: pip install opensmile') \
        from error
  return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                         feature_level=opensmile.FeatureLevel.LowLevelDescriptors)


def egemaps_lld(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """eGeMAPSv02 LLDs of a 16 kHz waveform: float32 `[4 * num_frames, 25]`.

  Row j describes the audio around sample 160 j + 80 (the middle of its 10 ms hop), each LLD
  through openSMILE's own window for it (20 or 60 ms, then a 3-row moving average; the module
  docstring gives the timing per LLD). Columns are `EGEMAPS_NAMES`. Samples outside the waveform
  count as zeros. openSMILE reads 16-bit samples: the waveform is clipped to [-1, 1) and
  quantised to 1 / 32768 (openSMILE's Python wrapper would wrap values outside around).

  Values as openSMILE gives them: F0 and the voice-quality LLDs are 0 where unvoiced (formant
  amplitudes -201 dB in silence); NaN or infinite values, which openSMILE gives only for a
  signal shorter than one 60 ms frame (ruled out here by the padding), would become 0, the
  value eGeMAPS itself uses for "not measured".

  Args:
    audio: 1-D float waveform at 16 kHz.
    num_frames: label frames to produce features for; defaults to enough to cover the audio
      (`features.num_label_frames`). When the audio runs on, up to `MARGIN_FRAMES` label frames
      after `num_frames` are read as context, so the rows equal those of the whole waveform
      within the tolerance `egemaps_span` states.
  """
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 1:
    raise ValueError(f'egemaps_lld expects a 1-D waveform, got shape {audio.shape}')
  if num_frames is None:
    num_frames = features.num_label_frames(audio.shape[0])
  num_rows = num_frames * EGEMAPS_PER_FRAME
  if num_rows <= 0:
    return np.zeros((0, NUM_EGEMAPS), np.float32)
  kept = audio[: (num_frames + MARGIN_FRAMES) * features.SAMPLES_PER_FRAME]
  signal = np.zeros(_LEFT_PAD + max(kept.shape[0], num_rows * HOP_LENGTH) + _RIGHT_PAD,
                    np.float32)
  signal[_LEFT_PAD: _LEFT_PAD + kept.shape[0]] = np.clip(kept, -1.0, 32767 / 32768)
  rows = _smile()(signal, SAMPLE_RATE)[0].T  # [openSMILE rows, 25]
  out = np.where(_IS_LONG, rows[_LONG_SHIFT: _LONG_SHIFT + num_rows],
                 rows[_SHORT_SHIFT: _SHORT_SHIFT + num_rows])
  return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def egemaps_span(waveform: np.ndarray, begin: int, end: int) -> np.ndarray:
  """`egemaps_lld(waveform)` rows for label frames `[begin, end)`, from a slice of the waveform.

  The slice reaches `MARGIN_FRAMES` label frames (0.48 s) past the span on each side (less at
  the ends of the recording), and further back while jitter and shimmer need it (at most
  `MAX_LOOKBACK_FRAMES`, 10 s), so a long recording can be processed span by span.

  What decides equality with the whole-recording computation:

  - Windows and smoothing reach 560 samples past the span: covered.
  - Viterbi pitch smoothing (F0, and through the voicing decision every `sma3nz` LLD): a frame
    is decided once all candidate paths merge, at the latest 40 frames (0.4 s) later, so the
    span's last row needs 6960 samples after it (10.9 label frames): covered. Before the span the
    trellis starts afresh at the slice start and must merge with the whole computation's path;
    openSMILE does not bound when, but on the speech-like test signals a 2-label-frame margin
    already gave identical F0, and the margin is 6 times that.
  - Jitter and shimmer: openSMILE's period tracker continues each frame's chain of pitch periods
    from where the previous frame's ended, throughout a voiced stretch, and restarts on the frame
    grid after an unvoiced frame. Within a voiced stretch the periods' phase, hence these two
    values, depend on where the stretch began: on a 60 s speech-like signal (85 % voiced), a
    fixed 1 s margin left jitter off by up to 0.15 and shimmer by up to 2.0 dB in 35 % and 17 %
    of the rows, a 2 s margin still by 0.035 and 1.3 dB in 12 % and 9 % (every other LLD was
    identical). So the slice is extended back, doubling its lead, until it holds an unvoiced row
    (F0 = 0) at least `_SETTLE_ROWS` after its start and before the span; from there on both
    computations track the same periods. A voiced stretch reaching further back than
    `MAX_LOOKBACK_FRAMES` stops the search: jitter and shimmer in it may then deviate as above.

  Measured with this rule, on two 60 s speech-like signals (one with white noise of std 0.02
  added, against peaks of 0.05-0.4), 17 spans of 2 s at the start, middle and end, margins of
  2, 5, 12 and 25 label frames: identical to the whole-recording rows in all 25 LLDs (bit for
  bit); the tests check spans of a 6 s signal the same way. The look-back costs extra openSMILE
  calls on the audio before the span (doubling, up to 10 s), only where a voiced stretch crosses
  the margin.
  """
  if not 0 <= begin <= end:
    raise ValueError(f'egemaps_span needs 0 <= begin <= end, got begin={begin}, end={end}')
  spf = features.SAMPLES_PER_FRAME
  lead = min(begin, MARGIN_FRAMES)
  rows = egemaps_lld(waveform[(begin - lead) * spf: (end + MARGIN_FRAMES) * spf],
                     num_frames=end - begin + lead)
  if lead < begin and not _has_unvoiced_row(rows, lead):
    # Look further back, on the audio before the span only, then compute the span once more.
    while lead < min(begin, MAX_LOOKBACK_FRAMES):
      lead = min(begin, 2 * lead, MAX_LOOKBACK_FRAMES)
      probe = egemaps_lld(waveform[(begin - lead) * spf: (begin + MARGIN_FRAMES) * spf],
                          num_frames=lead)
      if _has_unvoiced_row(probe, lead):
        break
    rows = egemaps_lld(waveform[(begin - lead) * spf: (end + MARGIN_FRAMES) * spf],
                       num_frames=end - begin + lead)
  return rows[lead * EGEMAPS_PER_FRAME:]


def _has_unvoiced_row(rows: np.ndarray, lead: int) -> bool:
  """Whether F0 is 0 in a row `_SETTLE_ROWS` or more after `rows`' start and before row
  `4 * lead` (the span's first row, whose jitter/shimmer then restart from it)."""
  return bool(np.any(rows[_SETTLE_ROWS: lead * EGEMAPS_PER_FRAME, _F0_COLUMN] == 0))
