"""Reference values of CCC and Pearson's r, derived here from their definitions in exact
rational arithmetic (Python's `fractions`), independently of the library and of numpy.

Population moments (Lin 1989; as audmetric, Keras 3 and the AVEC/MuSe baselines compute them):

    CCC = 2 s_xy / (s_xx + s_yy + (mean_x - mean_y)^2),   r = s_xy / sqrt(s_xx s_yy),

with s the population (1/n) second moments.
"""

from __future__ import annotations

from fractions import Fraction
import math


def _moments(truth, prediction):
  truth = [Fraction(str(v)) for v in truth]
  prediction = [Fraction(str(v)) for v in prediction]
  n = len(truth)
  mean_t, mean_p = sum(truth) / n, sum(prediction) / n
  s_tt = sum((t - mean_t) ** 2 for t in truth) / n
  s_pp = sum((p - mean_p) ** 2 for p in prediction) / n
  s_tp = sum((t - mean_t) * (p - mean_p) for t, p in zip(truth, prediction)) / n
  return mean_t, mean_p, s_tt, s_pp, s_tp


def exact_ccc(truth, prediction) -> Fraction:
  mean_t, mean_p, s_tt, s_pp, s_tp = _moments(truth, prediction)
  return 2 * s_tp / (s_tt + s_pp + (mean_t - mean_p) ** 2)


def pearson(truth, prediction) -> float:
  """r, exact up to the one square root (rounded once, to the nearest float)."""
  _, _, s_tt, s_pp, s_tp = _moments(truth, prediction)
  squared = s_tp * s_tp / (s_tt * s_pp)
  return math.copysign(math.sqrt(squared), s_tp)


PAIRS = [
    ([3, -0.5, 2, 7], [2.5, 0, 2, 8]),
    ([0, 1, 2], [0, 1, 1]),
]
# (truth, prediction, CCC, r) per pair.
REFERENCE = [(t, p, float(exact_ccc(t, p)), pearson(t, p)) for t, p in PAIRS]

# The two evaluation conventions on two short recordings: the mean of per-recording CCCs
# (AVEC 2018 GES) and the CCC of the concatenation (AVEC 2016/2018 CES, MuSe) differ.
RECORDINGS = [([0, 1, 2, 3], [.5, 1, 2, 2.5]), ([1, 1.5, 1, .5], [1.2, 1.4, 1.1, .4])]
SEQ_MEAN_CCC = float(sum(exact_ccc(t, p) for t, p in RECORDINGS) / len(RECORDINGS))
CONCAT_CCC = float(exact_ccc([v for t, _ in RECORDINGS for v in t],
                             [v for _, p in RECORDINGS for v in p]))
