"""The claims study's table: each paper claim's verdicts over several pipeline runs (seeds), with the synthetic
release's premises built in and in the control without them.

    python -m abaw_jax.report.study --premises=/tmp/claims/on_s0,/tmp/claims/on_s1,/tmp/claims/on_s2 \
        --control=/tmp/claims/off_s0,/tmp/claims/off_s1,/tmp/claims/off_s2

Each run is a finished pipeline workdir of `configs/abaw.py:claims` (premises) or `:claims_control`; the claims
table of its report (`report/report.md`, whose numbers and verdicts `report.check` verifies against the stage
files) is read as written. Per claim and task: how many runs gave each verdict, and the mean change with its
spread over runs (sample standard deviation). A claim "decided with its premise" holds in every premises run; the
study expects such a claim to be undecided or absent in the control (the README's "Claims study" section).
"""

from __future__ import annotations

import os
import pathlib
import statistics
from collections.abc import Sequence

from absl import app, flags

from abaw_jax.report.tables import read_tables
from abaw_jax.report.writer import REPORT_FILE
from abaw_jax.runtime.errors import ExplainedError
from abaw_jax.runtime.pipeline_dirs import PipelineDirs

CLAIMS_TITLE = "Claims"
VERDICTS = ("holds", "undecided", "does not hold", "too few videos to decide", "not measurable")


class StudyError(ExplainedError, ValueError):
    """A run folder without a finished report, or a report without the claims table."""


def claims_of(workdir: str | os.PathLike) -> dict[tuple[str, str], dict[str, str]]:
    """{(claim, task): its row of the claims table} of one finished run's report."""
    path = pathlib.Path(PipelineDirs(str(workdir)).report) / REPORT_FILE
    try:
        markdown = path.read_text(encoding="utf-8")
    except OSError as e:
        raise StudyError(f"{path}: no report ({e.strerror}); run the pipeline in {workdir} to the end first") from None
    tables = [t for t in read_tables(markdown) if t.title == CLAIMS_TITLE]
    if not tables:
        raise StudyError(f"{path}: no '{CLAIMS_TITLE}' table; expected a report of a pipeline run")
    return {(row["claim"], row["task"]): row for row in tables[0].records()}


def _summary(rows: Sequence[dict[str, str] | None]) -> tuple[str, str]:
    """(verdict counts, mean change ± spread) of one claim over runs; a run without the claim counts as absent."""
    verdicts = [row["verdict"] if row else "absent" for row in rows]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in (*VERDICTS, "absent") if verdicts.count(v))
    changes = [float(row["change"]) for row in rows if row and row["change"] not in ("", "—", "-")]
    if not changes:
        return counts, "—"
    spread = f" ± {statistics.stdev(changes):.4f}" if len(changes) > 1 else ""
    return counts, f"{statistics.mean(changes):+.4f}{spread}"


def study_table(premises: Sequence[str], control: Sequence[str]) -> str:
    """The markdown table of the study over the given run folders."""
    with_runs = [claims_of(w) for w in premises]
    without_runs = [claims_of(w) for w in control]
    keys = list(dict.fromkeys(k for runs in (with_runs, without_runs) for claims in runs for k in claims))
    lines = [
        f"| claim | task | premises built in: verdicts ({len(premises)} runs) | change | "
        f"control: verdicts ({len(control)} runs) | change |",
        "|---|---|---|---|---|---|",
    ]
    for claim, task in keys:
        on = _summary([claims.get((claim, task)) for claims in with_runs])
        off = _summary([claims.get((claim, task)) for claims in without_runs])
        lines.append(f"| {claim} | {task} | {on[0]} | {on[1]} | {off[0]} | {off[1]} |")
    return "\n".join(lines)


_PREMISES = flags.DEFINE_list("premises", [], "Workdirs of configs/abaw.py:claims runs (one per seed).")
_CONTROL = flags.DEFINE_list("control", [], "Workdirs of configs/abaw.py:claims_control runs (one per seed).")


def main(argv: Sequence[str]) -> None:
    del argv
    if not _PREMISES.value or not _CONTROL.value:
        raise app.UsageError("give --premises and --control, each a comma-separated list of run folders")
    try:
        print(study_table(_PREMISES.value, _CONTROL.value))
    except StudyError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
