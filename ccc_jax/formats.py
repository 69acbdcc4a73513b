"""The text table formats ccc-jax reads and writes, on one reader.

Owns:

- `read_table`: the one reader of delimited numeric tables with a header (traces, annotations,
  ratings, mocap): a missing file, a folder, non-UTF-8 bytes, a wrong header, an unparsable
  field, a short row or a time column that does not increase end in a `DataError` naming the
  file and the line (1-based file lines, the header being line 1). A UTF-8 byte-order mark is
  accepted; an empty field (or `nan`) is a missing value where the caller allows it.
- The traces CSV (`write_traces_csv`, `read_traces_csv`, `labels_on_frames`): predictions and
  gold standards, header `time,<task>,...`, one row per 40 ms label frame, `time` the frame's
  start in seconds.
- The mocap CSV (`read_mocap_csv`): header `time,<marker>_x,<marker>_y,<marker>_z,...`.
"""

from __future__ import annotations

import csv
import io
import os
from typing import NamedTuple, Sequence

import numpy as np
import pandas

from ccc_jax import files
from ccc_jax.errors import DataError
from ccc_jax.features import LABEL_RATE


def read_table(path: str | os.PathLike, what: str, *, delimiter: str = ',',
               first_column: str | None = 'time',
               allow_missing: bool = False) -> tuple[list[str], np.ndarray]:
  """`(column names, float64 table [rows, columns])` of a delimited text file with a header.

  Args:
    path: the file.
    what: what the file is, for messages ('mocap', 'labels', ...).
    delimiter: the field separator.
    first_column: the name the first column must have (None: any).
    allow_missing: empty fields and `nan` are missing values (NaN); otherwise an error.

  Raises:
    DataError: naming the file and, for a bad row, its line.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise DataError(f'{path}: is a folder; expected a {what} file')
  if not os.path.isfile(path):
    raise DataError(f'{path}: {what} file not found')
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as error:
    raise DataError(f'{path}: cannot read the {what} file ({error.strerror})') from None
  try:
    text = raw.decode('utf-8-sig')  # a byte-order mark from a spreadsheet program is fine
  except UnicodeDecodeError as error:
    line = raw[:error.start].count(b'\n') + 1
    raise DataError(f'{path}: not a UTF-8 text file (byte {error.start}, line {line}); '
                    f'expected a {what} CSV') from None
  lines = text.splitlines()
  if not lines or not lines[0].strip():
    raise DataError(f'{path}: empty; expected a header line and rows')
  columns = [name.strip() for name in lines[0].split(delimiter)]
  if len(columns) < 2 or not all(columns) or (first_column and columns[0] != first_column):
    expected = f'"{first_column}{delimiter}..."' if first_column else 'column names'
    raise DataError(f'{path}: line 1 must be a header {expected} separated by '
                    f'{delimiter!r}; got "{lines[0].strip()[:80]}"')
  body = '\n'.join(lines[1:])
  if not body.strip():
    raise DataError(f'{path}: no rows after the header')
  table = _parse_fast(body, delimiter, len(columns), allow_missing)
  if table is None:  # something is wrong: find the first bad line and name it
    table = _parse_checked(path, lines, delimiter, columns, allow_missing)
  return columns, table


def _parse_fast(body: str, delimiter: str, num_columns: int, allow_missing: bool):
  """pandas' C parser (13x numpy's `loadtxt` on a 5-minute, 45-marker, 120 Hz mocap file, and
  the same float64 values); None where anything is off, so that `_parse_checked` names it.

  Accepts only what `_parse_checked` accepts: no quoting, every row with exactly `num_columns`
  fields (pandas refuses a longer row, but would pad a shorter one with NaN: the count of
  separators catches it), finite numbers, and NaN only where missing values are allowed.
  """
  try:
    table = pandas.read_csv(
        io.StringIO(body), sep=delimiter, header=None, dtype=np.float64, engine='c',
        quoting=csv.QUOTE_NONE, keep_default_na=False,
        na_values=['', 'nan', 'NaN', 'NAN', 'Nan'] if allow_missing else []).to_numpy()
  except (ValueError, pandas.errors.ParserError, pandas.errors.EmptyDataError):
    return None
  if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != num_columns:
    return None
  if body.count(delimiter) != table.shape[0] * (num_columns - 1):
    return None
  if np.any(np.isinf(table)) or (not allow_missing and np.any(np.isnan(table))):
    return None
  return table


def _parse_checked(path: str, lines: list[str], delimiter: str, columns: list[str],
                   allow_missing: bool) -> np.ndarray:
  """The table parsed field by field, raising `DataError` at the first bad field."""
  rows = [(number, line) for number, line in enumerate(lines[1:], start=2) if line.strip()]
  table = np.empty((len(rows), len(columns)), np.float64)
  for index, (number, line) in enumerate(rows):
    fields = line.split(delimiter)
    if len(fields) != len(columns):
      raise DataError(f'{path}: line {number} has {len(fields)} fields, the header '
                      f'{len(columns)}')
    for column, field in enumerate(fields):
      field = field.strip()
      if not field or field.lower() == 'nan':
        if not allow_missing:
          raise DataError(f'{path}: line {number}: missing value in column '
                          f'"{columns[column]}"')
        table[index, column] = np.nan
        continue
      try:
        table[index, column] = float(field)
      except ValueError:
        raise DataError(f'{path}: line {number}: "{field[:20]}" in column '
                        f'"{columns[column]}" is not a number') from None
      if not np.isfinite(table[index, column]):
        raise DataError(f'{path}: line {number}: infinite value in column "{columns[column]}"')
  return table


def read_time_table(path: str | os.PathLike, what: str, *, delimiter: str = ',',
                    allow_missing: bool = False) -> tuple[list[str], np.ndarray]:
  """`read_table` of a table whose first column is `time` in seconds, increasing row by row."""
  path = os.fspath(path)
  columns, table = read_table(path, what, delimiter=delimiter, allow_missing=allow_missing)
  times = table[:, 0]
  if not np.all(np.isfinite(times)):
    row = int(np.flatnonzero(~np.isfinite(times))[0])
    raise DataError(f'{path}: line {row + 2}: the time is missing')
  steps = np.diff(times)
  if np.any(steps <= 0):
    row = int(np.flatnonzero(steps <= 0)[0])
    raise DataError(f'{path}: line {row + 3}: time {times[row + 1]} does not increase (the line '
                    f'before has {times[row]})')
  if times[0] < 0:
    raise DataError(f'{path}: line 2: time starts at {times[0]} s; it counts from 0')
  return columns, table


# ---------------------------------------------------------------------------------------------
# Traces.


def write_traces_csv(path: str | os.PathLike, traces: np.ndarray, tasks: Sequence[str],
                     label_rate: int = LABEL_RATE) -> None:
  """Writes `traces` `[frames, tasks]` as CSV, atomically: `time,<task>,...`, a row per frame.

  `time` is the start of the frame in seconds (frame i: i / label_rate, i.e. 0.00, 0.04, ...).
  """
  traces = np.asarray(traces)
  if traces.ndim != 2 or traces.shape[1] != len(tasks):
    raise ValueError(f'traces must be [frames, {len(tasks)}], got shape {traces.shape}')
  table = np.column_stack([np.arange(traces.shape[0]) / label_rate, traces])
  files.write_with(path, lambda f: np.savetxt(
      f, table, delimiter=',', header=traces_csv_header(tasks), comments='',
      fmt=TRACES_CSV_FORMAT[:1] + TRACES_CSV_FORMAT[1:] * len(tasks)))


# `time` (a frame's start in seconds), then one value per task.
TRACES_CSV_FORMAT = ('%.2f', '%.6f')


def traces_csv_header(tasks: Sequence[str]) -> str:
  return ','.join(['time', *tasks])


def traces_csv_row(time: float, values: Sequence[float]) -> str:
  """One line of a traces CSV (no newline), as `write_traces_csv` writes it."""
  return ','.join([TRACES_CSV_FORMAT[0] % time] + [TRACES_CSV_FORMAT[1] % v for v in values])


def read_traces_csv(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Reads a `time,<task>,...` CSV (as written by `write_traces_csv`): `(times, {task: values})`.

  Times are in seconds and increase row by row; rows need not be at 25 Hz. An empty field or
  `nan` is a missing value.
  """
  columns, table = read_time_table(path, 'labels', allow_missing=True)
  return table[:, 0], {name: table[:, k + 1] for k, name in enumerate(columns[1:])}


def labels_on_frames(times: np.ndarray, values: np.ndarray, num_frames: int,
                     label_rate: int = LABEL_RATE) -> np.ndarray:
  """A gold trace at the frame starts `i / label_rate`; NaN outside the labels' time span.

  Missing (NaN) gold values are skipped; between known values the gold is interpolated
  linearly, so labels at 25 Hz with times i * 0.04 land on the frames exactly.
  """
  known = np.isfinite(values)
  frame_times = np.arange(num_frames) / label_rate
  on_frames = np.full(num_frames, np.nan)
  if known.any():
    inside = (frame_times >= times[known][0] - 1e-9) & (frame_times <= times[known][-1] + 1e-9)
    on_frames[inside] = np.interp(frame_times[inside], times[known], values[known])
  return on_frames


# ---------------------------------------------------------------------------------------------
# Mocap.


class MocapTake(NamedTuple):
  """Marker positions read from a mocap CSV file.

  Attributes:
    positions: float32 `[frames, markers, 3]`; frame k is at time k / rate seconds; NaN where
      a marker was not seen (and for frames missing from the file).
    rate: frames per second, from the file's time column.
    markers: marker names in column order.
  """
  positions: np.ndarray
  rate: float
  markers: tuple[str, ...]


def read_mocap_csv(path: str | os.PathLike) -> MocapTake:
  """Reads a mocap CSV with header `time,<marker>_x,<marker>_y,<marker>_z,...`.

  Time is in seconds from the start of the recording (the audio's time zero). An empty field or
  `NaN` is a marker not seen. Frames dropped from the file (a time step of a whole multiple of
  the frame period) come back as NaN rows, so gap filling treats them like occlusions.

  Raises:
    DataError: missing file, not text, wrong header, unparsable or non-numeric rows, a time
      column that is not increasing or not on a regular grid; the message names the file.
  """
  path = os.fspath(path)
  columns, table = read_time_table(path, 'mocap', allow_missing=True)
  if len(columns) < 4 or (len(columns) - 1) % 3:
    raise DataError(f'{path}: mocap header must be "time,<marker>_x,<marker>_y,<marker>_z,..."; '
                    f'got {len(columns)} columns starting "{",".join(columns[:4])[:80]}"')
  markers = []
  for index in range(1, len(columns), 3):
    triple = columns[index: index + 3]
    name = triple[0][:-2]
    if not name or triple != [f'{name}_x', f'{name}_y', f'{name}_z']:
      raise DataError(f'{path}: mocap header columns {index + 1}-{index + 3} must be '
                      f'<marker>_x,<marker>_y,<marker>_z; got {",".join(triple)}')
    markers.append(name)
  if table.shape[0] < 2:
    raise DataError(f'{path}: mocap file has fewer than two frames')
  times = table[:, 0]
  steps = np.diff(times)
  # Timestamps are rounded in files (0.01667 s at 60 Hz), so the median step is a little off
  # and over 18000 frames that error adds up to several frames. Refine the period by a
  # least-squares fit over a growing prefix, each short enough that the previous period still
  # puts every row in its right slot.
  rough_period = period = float(np.median(steps))
  count = 64
  while True:
    count = min(count, len(times))
    prefix = times[:count] - times[0]
    slots = np.round(prefix / period)
    if slots[-1] > 0:
      period = float(np.polyfit(slots, prefix, 1)[0])
    if count == len(times):
      break
    count *= 16
  slots = np.round((times - times[0]) / period)
  if np.max(np.abs((times - times[0]) / period - slots)) > 0.25:
    raise DataError(f'{path}: time column is not on a regular grid (median step '
                    f'{rough_period:.6f} s)')
  slots = (slots + np.round(times[0] / period)).astype(np.int64)
  positions = np.full((slots[-1] + 1, len(markers), 3), np.nan, dtype=np.float32)
  positions[slots] = table[:, 1:].reshape(-1, len(markers), 3)
  return MocapTake(positions=positions, rate=1.0 / period, markers=tuple(markers))
