r"""Checks an ABAW submission file against the task's example file.

  python -m abaw_jax.eval.check_submission --task=EXPR --example=CVPR_6th_ABAW_Expr_test_set_example.txt \
      --submission=predictions.txt

Prints `ok: <file>: N rows` and exits 0, or one line `error: <file>:<line>: ...` and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from abaw_jax import tasks
from abaw_jax.eval.submission import SubmissionError, check_submission


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, type=str.upper, choices=tasks.TASK_NAMES)
    parser.add_argument("--example", required=True, help="the task's example file from the test set release")
    parser.add_argument("--submission", required=True, help="the file to check")
    args = parser.parse_args(argv)
    try:
        rows = check_submission(args.submission, args.example, args.task)
    except SubmissionError as e:
        print(f"error: {e}")
        return 1
    print(f"ok: {args.submission}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
