"""Parsers of the RECOLA (AVEC 2016) label and feature files.

Owns reading ARFF files (gold standard and eGeMAPS features) and the `;`-separated individual
ratings, with errors that name the file and the problem. Every label file is checked to lie
on the 25 Hz grid (row k at 40 k ms) and returned as one value per label frame.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ccc_jax import formats
from ccc_jax.errors import DataError
from ccc_jax.features import LABEL_RATE

_NUMERIC_TYPES = ('numeric', 'real', 'integer')


def _parse_attribute(line: str) -> tuple[str, str]:
  """('name', 'type') of an `@attribute name type` line; names may be quoted."""
  rest = line.strip()[len('@attribute'):].strip()
  if rest[:1] in ('"', "'"):
    quote = rest[0]
    end = rest.index(quote, 1)
    return rest[1:end], rest[end + 1:].strip()
  name, _, kind = rest.partition(' ')
  return name, kind.strip()


def read_arff(path: str | os.PathLike, drop: tuple[str, ...] = ()) -> tuple[list[str], np.ndarray]:
  """Numeric attributes of an ARFF file: (names, float64 table [rows, names]).

  String and nominal attributes and those named in `drop` are skipped. CRLF line endings and
  any relation name are accepted.

  Raises:
    DataError: missing file, no `@data` section, unparsable rows or missing values (`?`) in
      a kept column, NaN values; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  with open(path, encoding='utf-8', errors='replace') as f:  # universal newlines: CRLF is fine
    lines = f.read().split('\n')
  names, kinds, data_start = [], [], None
  for number, line in enumerate(lines):
    lowered = line.strip().lower()
    if lowered.startswith('@attribute'):
      name, kind = _parse_attribute(line)
      names.append(name)
      kinds.append(kind.lower())
    elif lowered.startswith('@data'):
      data_start = number + 1
      break
  if data_start is None or not names:
    raise DataError(f'{path}: not an ARFF file (no @attribute lines or no @data section)')
  keep = [index for index, (name, kind) in enumerate(zip(names, kinds))
          if kind in _NUMERIC_TYPES and name not in drop]
  # (file line number, text) of each data row; line numbers count from 1, as an editor does.
  rows = [(number + 1, line) for number, line in enumerate(lines[data_start:], start=data_start)
          if line.strip() and not line.startswith('%')]
  if not rows:
    raise DataError(f'{path}: the @data section is empty')
  table = np.empty((len(rows), len(keep)), np.float64)
  for index, (number, line) in enumerate(rows):
    fields = next(csv.reader([line], quotechar="'", skipinitialspace=True))
    if len(fields) != len(names):
      raise DataError(f'{path}: line {number} has {len(fields)} values; the header declares '
                      f'{len(names)} attributes')
    for column, attribute in enumerate(keep):
      field = fields[attribute].strip()
      try:
        value = float(field)
      except ValueError:
        what = 'a missing value (?)' if field == '?' else f'"{field[:20]}", not a number'
        raise DataError(f'{path}: line {number}: {what} for attribute '
                        f'{names[attribute]}') from None
      if not np.isfinite(value):
        raise DataError(f'{path}: line {number}: NaN or infinite value for attribute '
                        f'{names[attribute]}')
      table[index, column] = value
  return [names[index] for index in keep], table


def frames_from_times(path: str | os.PathLike, times: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Values per label frame from rows at times k * 40 ms (a grid starting at 0 or 40 ms).

  Raises:
    DataError: the times are not on the 25 Hz grid.
  """
  slots = times * LABEL_RATE
  first = int(round(slots[0])) if slots.size else 0
  expected = first + np.arange(len(times))
  if not slots.size or first not in (0, 1) or np.max(np.abs(slots - expected)) > 0.05:
    raise DataError(f'{os.fspath(path)}: times are not a 25 Hz grid from 0 s (one row every '
                    f'0.04 s); first times {np.round(times[:3], 4).tolist()}')
  # A grid starting one frame late gives frame 0 the first row's value.
  return np.concatenate([np.repeat(values[:1], first, axis=0), values])


def read_gold_standard_arff(path: str | os.PathLike) -> np.ndarray:
  """Gold standard per label frame, float64 [frames], from an AVEC 2016 gold-standard ARFF."""
  names, table = read_arff(path)
  missing = [name for name in ('frameTime', 'GoldStandard') if name not in names]
  if missing:
    raise DataError(f'{os.fspath(path)}: gold-standard ARFF lacks attribute(s) {missing}; '
                    f'found {names}')
  times = table[:, names.index('frameTime')]
  return frames_from_times(path, times, table[:, names.index('GoldStandard')])


def read_ratings_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """Individual ratings per label frame: (rater names, float64 [frames, raters]).

  The file is `;`-separated with header `time;FM1 ;FM2 ;...` (rater names stripped of the
  trailing spaces the published files carry).
  """
  columns, table = formats.read_table(path, 'ratings', delimiter=';')
  return columns[1:], frames_from_times(path, table[:, 0], table[:, 1:])
