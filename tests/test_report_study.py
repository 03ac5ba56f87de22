"""The claims study's table over several runs: verdict counts and the mean change with its spread, read from each
run's report (here written by hand in the report's layout)."""

import pytest

from abaw_jax.report import study

HEADER = (
    "| claim | task | without | with | change | change 95% CI | videos | verdict |\n|---|---|---|---|---|---|---|---|\n"
)


def _run(tmp_path, name, rows):
    (tmp_path / name / "report").mkdir(parents=True)
    body = "".join(
        f"| {claim} | {task} | a | b | {change} | [0, 1] | 16 | {verdict} |\n" for claim, task, change, verdict in rows
    )
    (tmp_path / name / "report" / "report.md").write_text(f"# Report\n\n### Claims\n\n{HEADER}{body}\n## Figures\n")
    return str(tmp_path / name)


def test_verdicts_are_counted_and_changes_averaged_per_claim(tmp_path):
    on = [
        _run(tmp_path, "on0", [("TMF helps", "VA", "+0.4000", "holds"), ("audio", "VA", "+0.2000", "holds")]),
        _run(tmp_path, "on1", [("TMF helps", "VA", "+0.2000", "holds"), ("audio", "VA", "-0.0100", "undecided")]),
    ]
    off = [_run(tmp_path, "off0", [("TMF helps", "VA", "+0.0100", "undecided")])]
    lines = study.study_table(on, off).splitlines()
    assert lines[0].startswith("| claim | task | premises built in: verdicts (2 runs)")
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:2]: line for line in lines[2:]}
    assert rows["TMF helps", "VA"] == "| TMF helps | VA | 2 holds | +0.3000 ± 0.1414 | 1 undecided | +0.0100 |"
    assert rows["audio", "VA"] == "| audio | VA | 1 holds, 1 undecided | +0.0950 ± 0.1485 | 1 absent | — |"


def test_a_run_without_a_report_is_one_clear_error(tmp_path):
    with pytest.raises(study.StudyError, match="no report.*run the pipeline"):
        study.claims_of(tmp_path / "missing")
    (tmp_path / "other" / "report").mkdir(parents=True)
    (tmp_path / "other" / "report" / "report.md").write_text("# Report\n\nno tables\n")
    with pytest.raises(study.StudyError, match="no 'Claims' table"):
        study.claims_of(tmp_path / "other")
