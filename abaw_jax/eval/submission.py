"""ABAW submission files: writing them in the official format, and checking any file against an example file.

A submission repeats the example file's header line verbatim, then one row per row of the example file, in its
order, with the location the example gives and the task's values:

  AU    video/00001.jpg,0,1,0,0,0,0,1,0,0,0,1,0      12 integers 0/1 in the header's AU order
  EXPR  video/00001.jpg,4                            one integer class 0..7
  VA    video/00001.jpg,0.123456,-0.050000           valence and arousal, floats in [-1, 1]

Every problem is a `SubmissionError` naming the file and the 1-based line: what was expected and what was found.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from abaw_jax import tasks
from abaw_jax.data import affwild2


class SubmissionError(ValueError):
    """A submission (or example) file that does not match the official format; the message says file:line."""


def _lines(path: pathlib.Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}:1: cannot read the file ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_example(example_path: str | os.PathLike, task: str) -> tuple[str, list[str]]:
    """(header line, row locations) of an example file, checked against the task's official header."""
    example_path = pathlib.Path(example_path)
    task_facts = tasks.get_task(task)
    lines = _lines(example_path)
    if not lines or lines[0].strip() != task_facts.submission_header:
        raise SubmissionError(
            f"{example_path}:1: expected the {task_facts.name} header "
            f"{task_facts.submission_header!r}, found {lines[0] if lines else ''!r}"
        )
    try:
        template = affwild2.read_submission_template(example_path, task_facts.name)
    except affwild2.AnnotationError as e:
        raise SubmissionError(str(e)) from None
    locations = [f"{name}/{frame:05d}.jpg" for name, frame in zip(template.names, template.frames)]
    return lines[0].strip(), locations


def _format(task: tasks.Task, values: np.ndarray) -> str:
    if task.kind == "binary":
        return ",".join(str(int(v)) for v in values)
    if task.kind == "multiclass":
        return str(int(values))
    return ",".join(f"{float(v):.6f}" for v in np.clip(values, -1.0, 1.0))


def write_submission(
    path: str | os.PathLike, task: str, example_path: str | os.PathLike, predictions: Mapping[str, np.ndarray]
) -> int:
    """Writes a submission for every row of the example file; returns the number of rows.

    predictions: {video name: final labels for frames 1..N}: AU (N, 12) 0/1, EXPR (N,) classes, VA (N, 2).
    Each video of the example file must have predictions for exactly the frames the example lists.
    """
    task_facts = tasks.get_task(task)
    example_path = pathlib.Path(example_path)
    header, locations = read_example(example_path, task_facts.name)
    names = [location.rsplit("/", 1)[0] for location in locations]
    frames = [int(location.rsplit("/", 1)[1][:5]) for location in locations]
    rows_of: dict[str, int] = {}
    for name in names:
        rows_of[name] = rows_of.get(name, 0) + 1
    for name, count in rows_of.items():
        if name not in predictions:
            raise SubmissionError(f"{example_path}: test video {name!r} ({count} frames) has no predictions")
        if len(predictions[name]) != count:
            raise SubmissionError(
                f"{example_path}: test video {name!r} has {count} frames in the example file but "
                f"{len(predictions[name])} predicted frames"
            )
    rows = [header]
    for line, (location, name, frame) in enumerate(zip(locations, names, frames), start=2):
        if not 1 <= frame <= len(predictions[name]):
            raise SubmissionError(
                f"{example_path}:{line}: frame {frame} of {name!r} is outside the "
                f"{len(predictions[name])} predicted frames"
            )
        rows.append(f"{location},{_format(task_facts, np.asarray(predictions[name][frame - 1]))}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(rows) - 1


def _check_values(task: tasks.Task, fields: list[str]) -> str | None:
    """What is wrong with a row's values, or None."""
    if task.kind == "binary":
        if len(fields) != 12 or any(f.strip() not in ("0", "1") for f in fields):
            return f"12 values 0 or 1 ({','.join(task.label_names)}), found {','.join(fields)!r}"
    elif task.kind == "multiclass":
        if len(fields) != 1 or fields[0].strip() not in {str(c) for c in range(task.num_outputs)}:
            return f"one integer class 0..{task.num_outputs - 1}, found {','.join(fields)!r}"
    else:
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = []
        if len(fields) != 2 or len(values) != 2 or not all(math.isfinite(v) and -1 <= v <= 1 for v in values):
            return f"valence,arousal as two floats in [-1, 1], found {','.join(fields)!r}"
    return None


def check_submission(path: str | os.PathLike, example_path: str | os.PathLike, task: str) -> int:
    """Checks a submission file against an example file; returns its row count, raises SubmissionError."""
    task_facts = tasks.get_task(task)
    path = pathlib.Path(path)
    header, locations = read_example(example_path, task_facts.name)
    lines = _lines(path)
    if not lines or lines[0].strip() != header:
        raise SubmissionError(
            f"{path}:1: expected the example's header {header!r}, found {lines[0] if lines else ''!r}"
        )
    rows = lines[1:]
    for line, (row, location) in enumerate(zip(rows, locations), start=2):
        fields = row.strip().split(",")
        if fields[0] != location:
            raise SubmissionError(
                f"{path}:{line}: expected location {location!r} (row {line - 1} of {example_path}), found {fields[0]!r}"
            )
        problem = _check_values(task_facts, fields[1:])
        if problem:
            raise SubmissionError(f"{path}:{line}: expected {problem}")
    if len(rows) < len(locations):
        raise SubmissionError(
            f"{path}:{len(rows) + 2}: the file ends after {len(rows)} rows; the example has "
            f"{len(locations)} (next expected {locations[len(rows)]!r})"
        )
    if len(rows) > len(locations):
        raise SubmissionError(
            f"{path}:{len(locations) + 2}: expected the end of the file after the example's "
            f"{len(locations)} rows, found {rows[len(locations)]!r}"
        )
    return len(rows)
