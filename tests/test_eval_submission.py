"""Submission files against the synthetic release's example files: writing, and each kind of wrong file."""

import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.eval import check_submission as cli
from abaw_jax.eval import submission


def _example(root, task):
    return root / "test_set" / "prediction_files_format" / tasks.get_task(task).example_file


def _predictions(root, task, rng):
    lines = _example(root, task).read_text().splitlines()[1:]
    counts = {}
    for line in lines:
        name = line.split("/")[0]
        counts[name] = counts.get(name, 0) + 1
    if task == "AU":
        return {n: rng.integers(0, 2, (c, 12)) for n, c in counts.items()}
    if task == "EXPR":
        return {n: rng.integers(0, 8, c) for n, c in counts.items()}
    return {n: rng.uniform(-1.2, 1.2, (c, 2)) for n, c in counts.items()}


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA"])
def test_written_file_is_the_official_format(task, synthetic_affwild2, tmp_path):
    rng = np.random.default_rng(0)
    predictions = _predictions(synthetic_affwild2, task, rng)
    path = tmp_path / f"{task}.txt"
    rows = submission.write_submission(path, task, _example(synthetic_affwild2, task), predictions)
    example_lines = _example(synthetic_affwild2, task).read_text().splitlines()
    lines = path.read_text().splitlines()
    assert rows == len(example_lines) - 1 == len(lines) - 1
    assert lines[0] == example_lines[0]
    for line, example_line in zip(lines[1:], example_lines[1:]):
        location, *values = line.split(",")
        assert location == example_line.split(",")[0]
        name, frame = location.split("/")[0], int(location.split("/")[1][:5])
        expected = np.atleast_1d(predictions[name][frame - 1])
        if task == "VA":
            np.testing.assert_allclose([float(v) for v in values], np.clip(expected, -1, 1), atol=1e-6)
        else:
            assert [int(v) for v in values] == expected.tolist()
    assert submission.check_submission(path, _example(synthetic_affwild2, task), task) == rows


def _write_valid(root, task, tmp_path):
    path = tmp_path / f"{task}.txt"
    submission.write_submission(path, task, _example(root, task), _predictions(root, task, np.random.default_rng(1)))
    return path


def _mutate(path, line_number, new_line=None, delete=False, insert=None):
    lines = path.read_text().splitlines()
    if delete:
        del lines[line_number - 1]
    elif insert is not None:
        lines.insert(line_number - 1, insert)
    else:
        lines[line_number - 1] = new_line
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "task, mutation, message",
    [
        ("EXPR", dict(line_number=1, new_line="image_location,Neutral,Anger"), r":1: expected the example's header"),
        (
            "EXPR",
            dict(line_number=5, delete=True),
            r":5: expected location '.*/00004.jpg' \(row 4 of .*\), found '.*/00005.jpg'",
        ),
        (
            "EXPR",
            dict(line_number=2, new_line="21-30-320x240/00001.jpg,8"),
            r":2: expected one integer class 0..7, found '8'",
        ),
        ("EXPR", dict(line_number=3, new_line="21-30-320x240/00002.jpg,1.0"), r":3: expected one integer class"),
        (
            "AU",
            dict(line_number=4, new_line="21-30-320x240/00003.jpg,0,1,2,0,0,0,0,0,0,0,0,0"),
            r":4: expected 12 values 0 or 1",
        ),
        ("AU", dict(line_number=4, new_line="21-30-320x240/00003.jpg,0,1,0"), r":4: expected 12 values 0 or 1"),
        (
            "VA",
            dict(line_number=2, new_line="21-30-320x240/00001.jpg,0.5,1.5"),
            r":2: expected valence,arousal as two floats in \[-1, 1\]",
        ),
        ("VA", dict(line_number=2, new_line="21-30-320x240/00001.jpg,nan,0.1"), r":2: expected valence,arousal"),
    ],
)
def test_checker_says_file_line_and_what_is_wrong(task, mutation, message, synthetic_affwild2, tmp_path):
    path = _write_valid(synthetic_affwild2, task, tmp_path)
    _mutate(path, **mutation)
    with pytest.raises(submission.SubmissionError, match=str(path).replace(".", r"\.") + message):
        submission.check_submission(path, _example(synthetic_affwild2, task), task)


def test_checker_row_count_and_order(synthetic_affwild2, tmp_path):
    example = _example(synthetic_affwild2, "VA")
    path = _write_valid(synthetic_affwild2, "VA", tmp_path)
    lines = path.read_text().splitlines()
    total = len(lines) - 1
    path.write_text("\n".join(lines[:-2]) + "\n")  # two rows short
    with pytest.raises(
        submission.SubmissionError,
        match=rf":{total}: the file ends after {total - 2} rows; "
        rf"the example has {total}",
    ):
        submission.check_submission(path, example, "VA")
    path.write_text("\n".join(lines + [lines[-1]]) + "\n")  # one row too many
    with pytest.raises(submission.SubmissionError, match=rf":{total + 2}: expected the end of the file"):
        submission.check_submission(path, example, "VA")
    swapped = lines[:2] + [lines[3], lines[2]] + lines[4:]
    path.write_text("\n".join(swapped) + "\n")
    with pytest.raises(submission.SubmissionError, match=r":3: expected location '.*/00002.jpg'"):
        submission.check_submission(path, example, "VA")


def test_writer_refuses_missing_videos_wrong_counts_and_bad_examples(synthetic_affwild2, tmp_path):
    example = _example(synthetic_affwild2, "EXPR")
    predictions = _predictions(synthetic_affwild2, "EXPR", np.random.default_rng(2))
    name = next(iter(predictions))
    with pytest.raises(submission.SubmissionError, match=rf"test video '{name}' \(\d+ frames\) has no predictions"):
        submission.write_submission(tmp_path / "a.txt", "EXPR", example, {})
    short = {name: predictions[name][:-3]}
    with pytest.raises(
        submission.SubmissionError,
        match=rf"has {len(predictions[name])} frames in the example file "
        rf"but {len(predictions[name]) - 3} predicted",
    ):
        submission.write_submission(tmp_path / "a.txt", "EXPR", example, short)
    bad = tmp_path / "bad_example.txt"
    bad.write_text(example.read_text().replace("image_location", "location", 1))
    with pytest.raises(submission.SubmissionError, match=r"bad_example.txt:1: expected the EXPR header"):
        submission.write_submission(tmp_path / "a.txt", "EXPR", bad, predictions)


def test_cli_prints_one_line(synthetic_affwild2, tmp_path, capsys):
    example = _example(synthetic_affwild2, "AU")
    path = _write_valid(synthetic_affwild2, "AU", tmp_path)
    assert cli.main(["--task=AU", f"--example={example}", f"--submission={path}"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path}: ")
    _mutate(path, 3, new_line="21-30-320x240/00002.jpg,1")
    assert cli.main(["--task=au", f"--example={example}", f"--submission={path}"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"error: {path}:3: expected 12 values 0 or 1")
