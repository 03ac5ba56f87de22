"""The report's check: every number, interval and verdict of its tables against the stage files (tests call it).

`check_report(dirs, markdown, tasks=...)` reads the stage files on its own (not through the writer's helpers),
recomputes each interval with `report.bootstrap` from evaluate's per-video statistics (after checking that those
statistics give the score they belong to), and returns the mismatches (empty: all agree).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from abaw_jax import table6
from abaw_jax import tasks as task_facts
from abaw_jax.report import bootstrap
from abaw_jax.report.claims import DIFFERENT_VIDEOS, NO_REACTION_TRACKS, NO_STATISTICS
from abaw_jax.report.stage_files import task_keys
from abaw_jax.report.tables import (
    ALL_FRAMES,
    CI,
    FACE_FRAMES,
    MISSING,
    SUBMISSION_ROW,
    SUMMARY_HEADER,
    TABLE_NUMBER,
    VISUAL_ONLY,
    WITH_AUDIO,
    Table,
    read_tables,
)
from abaw_jax.runtime.artefacts import BEST_FILE, METRICS_FILE, PER_VIDEO_FILE, RESULTS_FILE, SCORES_FILE
from abaw_jax.runtime.pipeline_dirs import PipelineDirs


def _same(cell: str, expected: Any) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return cell == MISSING
    if isinstance(expected, str) or (isinstance(expected, int) and not isinstance(expected, bool)):
        return cell == str(expected)
    try:
        return abs(float(cell) - float(expected)) <= 5.001e-5
    except ValueError:
        return False


def _optional_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _statistics(per_video: dict | None, key: str) -> tuple[list[str], np.ndarray] | None:
    entry = (per_video or {}).get(key)
    return None if entry is None else (list(entry["videos"]), np.asarray(entry["statistics"], np.float64))


def _interval(per_video: dict | None, key: str, score: Any, problems: list[str], where: str) -> str:
    """The interval cell the report must show for a score, after checking its statistics give the score."""
    found = _statistics(per_video, key)
    if found is None or score is None:
        return MISSING
    recomputed = bootstrap.point(found[1])
    if abs(recomputed - float(score)) > 1e-4:
        problems.append(f"{where}: per-video statistics {key!r} give {recomputed!r}, the score {score!r}")
    return bootstrap.format_interval(*bootstrap.score_interval(found[1]))


def _same_interval(cell: str, expected: str) -> bool:
    if expected == MISSING:
        return cell == MISSING
    shown, wanted = bootstrap.parse_interval(cell), bootstrap.parse_interval(expected)
    return shown is not None and all(abs(a - b) <= 5.001e-5 for a, b in zip(shown, wanted))


def check_report(dirs: PipelineDirs, markdown: str, *, tasks: Sequence[str]) -> list[str]:
    """Mismatches between the numbers in `markdown`'s tables and the stage files of `dirs` (empty: all agree).

    Also checks that every expected table is there, that each interval is the bootstrap of its score's per-video
    statistics, that each claim's scores are the Table 5 cells it names, and that its interval and verdict are
    those of the paired bootstrap of those cells.
    """
    problems: list[str] = []
    tables = {t.title: t for t in read_tables(markdown)}

    def table(prefix: str) -> Table | None:
        found = [t for title, t in tables.items() if title.startswith(prefix)]
        if not found:
            problems.append(f"no table titled {prefix!r}...")
        return found[0] if found else None

    def compare(where: str, record: dict[str, str], expected: dict[str, Any], intervals: dict | None = None) -> None:
        intervals = intervals or {}
        for column, value in {**expected, **intervals}.items():
            same = _same_interval if column in intervals else _same
            if column not in record:
                problems.append(f"{where}: no column {column!r}")
            elif not same(record[column], value):
                problems.append(f"{where}, {column}: report {record[column]!r}, file {value!r}")

    summary = table("Summary")
    training = table("Training")
    claims = table("Claims")
    for key in task_keys(tasks):
        task = task_facts.get_task(key)
        results = json.loads(pathlib.Path(dirs.evaluate(key), RESULTS_FILE).read_text())
        per_video = _optional_json(pathlib.Path(dirs.evaluate(key), PER_VIDEO_FILE))
        visual = _optional_json(pathlib.Path(dirs.evaluate(key, "visual"), RESULTS_FILE))
        visual_per_video = _optional_json(pathlib.Path(dirs.evaluate(key, "visual"), PER_VIDEO_FILE))
        scores = json.loads(pathlib.Path(dirs.fusion(key), SCORES_FILE).read_text())
        best = json.loads(pathlib.Path(dirs.finetune(key), BEST_FILE).read_text())
        lines = pathlib.Path(dirs.finetune(key), METRICS_FILE).read_text().splitlines()
        losses = [r for r in (json.loads(x) for x in lines if x.strip()) if "loss" in r]
        if summary:
            rows = [r for r in summary.records() if r["task"] == task.name]
            if len(rows) != 1:
                problems.append(f"Summary: {len(rows)} rows for {task.name}")
            for r in rows:
                oof = results["tables"]["out-of-fold"]["after"]["metric"]
                where = f"Summary {task.name}"
                compare(
                    where,
                    r,
                    {
                        SUMMARY_HEADER[2]: best["metric"],
                        SUMMARY_HEADER[3]: results["tables"]["official"]["before"]["metric"],
                        SUMMARY_HEADER[4]: oof,
                        SUMMARY_HEADER[6]: results["test_metric"],
                    },
                    {
                        SUMMARY_HEADER[5]: _interval(per_video, "tables/out-of-fold/after", oof, problems, where),
                        SUMMARY_HEADER[7]: _interval(per_video, "test_metric", results["test_metric"], problems, where),
                    },
                )
        if training:
            for r in training.records():
                if r["stage"] == f"finetune_{key}":
                    compare(
                        f"Training {r['stage']}",
                        r,
                        {
                            "last step": losses[-1]["step"],
                            "first loss": losses[0]["loss"],
                            "last loss": losses[-1]["loss"],
                            "best eval metric": best["metric"],
                            "best step": best["step"],
                        },
                    )
        number = TABLE_NUMBER[task.name]
        for stage, suffix in (("before", "raw outputs"), ("after", "after post-processing")):
            candidates = [
                x
                for title, x in tables.items()
                if title.startswith(f"Table {number} ({task.name})") and title.endswith(suffix)
            ]
            if not candidates:
                problems.append(f"no Table {number} ({task.name}) {suffix}")
                continue
            t = candidates[0]
            if [r["member"] for r in t.records()] != list(results["tables"]):
                problems.append(
                    f"Table {number} ({task.name}) {suffix}: members {[r['member'] for r in t.records()]}"
                    f", file {list(results['tables'])}"
                )
            for r in t.records():
                entry = results["tables"].get(r["member"])
                if entry is None:
                    continue
                row = entry[stage]
                where = f"Table {number} ({task.name}) {suffix} {r['member']}"
                compare(
                    where,
                    r,
                    {
                        "tracks": entry["tracks"],
                        "frames": row["frames"],
                        **dict(zip(task.label_names, row["per_class"])),
                        ALL_FRAMES: row["metric"],
                        FACE_FRAMES: row["metric_face_frames"],
                    },
                    {
                        f"{ALL_FRAMES} {CI}": _interval(
                            per_video, f"tables/{r['member']}/{stage}", row["metric"], problems, where
                        )
                    },
                )
        tuning = table(f"Tuning ({task.name})")
        if tuning:
            steps = results["tuning"]["steps"]
            if len(tuning.rows) != len(steps):
                problems.append(f"Tuning ({task.name}): {len(tuning.rows)} rows, file {len(steps)} steps")
            for r, s in zip(tuning.records(), steps):
                values = s["value"] if isinstance(s["value"], list) else [s["value"]]
                cells = r["value"].split()
                if (
                    r["step"] != s["step"]
                    or len(cells) != len(values)
                    or any(abs(float(c) - v) > 1e-5 * max(1.0, abs(v)) for c, v in zip(cells, values))
                ):
                    problems.append(f"Tuning ({task.name}) {r['step']}, value: report {r['value']!r}, file {values}")
                compare(f"Tuning ({task.name}) {r['step']}", r, {"before": s["before"], "after": s["after"]})
        fusion = table(f"Fusion members ({task.name})")
        if fusion:
            if [r["member"] for r in fusion.records()] != list(scores["members"]):
                problems.append(f"Fusion members ({task.name}): members differ from {list(scores['members'])}")
            for r in fusion.records():
                info = scores["members"].get(r["member"], {})
                compare(
                    f"Fusion members ({task.name}) {r['member']}",
                    r,
                    {
                        "train tracks": len(info.get("train", [])),
                        "held-out tracks": len(info.get("heldout", [])),
                        "best step": info.get("best_step"),
                        "held-out (face frames)": scores["heldout"].get(r["member"], {}).get("metric"),
                        "test (face frames)": scores["test"].get(r["member"], {}).get("metric"),
                    },
                )
        ablation = table(f"Table 5 ({task.name})")
        if ablation:
            cells = {}  # (setting, column) -> (score, (videos, statistics) or None)
            for column, source, source_per_video in (
                (WITH_AUDIO, results, per_video),
                (VISUAL_ONLY, visual, visual_per_video),
            ):
                if source is None:
                    if column in ablation.header:
                        problems.append(f"Table 5 ({task.name}): a {column!r} column without its results.json")
                    continue
                expected = {r["setting"]: r["metric"] for r in source["ablation"]}
                if source["test_metric"] is not None:
                    expected[SUBMISSION_ROW] = source["test_metric"]
                shown = {r["setting"]: r for r in ablation.records()}
                for setting, value in expected.items():
                    stats_key = "test_metric" if setting == SUBMISSION_ROW else f"ablation/{setting}"
                    where = f"Table 5 ({task.name}) {setting} [{column}]"
                    if setting not in shown:
                        problems.append(f"Table 5 ({task.name}): no row {setting!r}")
                        continue
                    compare(
                        where,
                        shown[setting],
                        {column: value},
                        {f"{column} {CI}": _interval(source_per_video, stats_key, value, problems, where)},
                    )
                    cells[(setting, column)] = (value, _statistics(source_per_video, stats_key))
            if claims:
                for r in claims.records():
                    if r["task"] != task.name:
                        continue
                    sides, refs = [], []
                    for side in ("without", "with"):
                        match = re.fullmatch(r"(.*) \[(.*)\]", r[side])
                        ref = (match.group(1), match.group(2)) if match else None
                        if ref not in cells:
                            problems.append(f"Claims {r['claim']} {task.name}: {side} {r[side]!r} is no Table 5 cell")
                            break
                        sides.append(cells[ref])
                        refs.append(ref)
                        compare(f"Claims {r['claim']} {task.name}", r, {f"{side} score": cells[ref][0]})
                    if len(sides) == 2:
                        _check_claim(r, task.name, refs, sides, results, compare, problems)
    mae_lines = pathlib.Path(dirs.mae, METRICS_FILE).read_text().splitlines()
    mae_losses = [r for r in (json.loads(x) for x in mae_lines if x.strip()) if "loss" in r]
    if training:
        for r in training.records():
            if r["stage"] == "mae":
                compare(
                    "Training mae",
                    r,
                    {
                        "last step": mae_losses[-1]["step"],
                        "first loss": mae_losses[0]["loss"],
                        "last loss": mae_losses[-1]["loss"],
                    },
                )
    rows = [(k, n) for n in table6.ROWS for k in task_keys(tasks) if pathlib.Path(dirs.table6(k, n)).is_dir()]
    table_6 = table("Table 6:") if rows else None
    if table_6:
        records = {r["row"]: r for r in table_6.records()}
        for key, number in rows:
            task, folder = task_facts.get_task(key), pathlib.Path(dirs.table6(key, number))
            if str(number) not in records:
                problems.append(f"Table 6: no row {number}")
                continue
            heldout = json.loads((folder / SCORES_FILE).read_text())["heldout"]
            expected = {
                task.name: heldout["official"]["metric"],
                f"{task.name} paper": table6.ROWS[number].paper[task.name],
            }
            compare(f"Table 6 row {number}", records[str(number)], expected)
    return problems


def _check_claim(r: dict[str, str], task: str, refs: list, sides: list, results: dict, compare, problems: list[str]):
    """A claim row's change, interval, videos and verdict against the paired bootstrap of its two cells."""
    where = f"Claims {r['claim']} {task}"
    compare(where, r, {"change": sides[1][0] - sides[0][0]})
    unmeasurable = r["claim"].startswith("SDD helps") and any(
        row["setting"] == refs[1][0] and row.get("reaction_tracks") == 0 for row in results["ablation"]
    )
    (_, without), (_, with_) = sides
    order = with_[0] if with_ is not None else []
    if without is None or with_ is None:
        interval, videos, verdict = MISSING, MISSING, NO_STATISTICS
    elif sorted(without[0]) != sorted(order):
        interval, videos, verdict = MISSING, MISSING, DIFFERENT_VIDEOS
    else:
        low, high = bootstrap.difference_interval(bootstrap.align(without[0], without[1], order), with_[1])
        interval, videos = bootstrap.format_interval(low, high), str(len(order))
        verdict = bootstrap.verdict(low, high, len(order))
    if unmeasurable:
        verdict = NO_REACTION_TRACKS
    compare(where, r, {"videos": videos}, {f"change {CI}": interval})
    if r["verdict"] != verdict:
        problems.append(f"{where}: verdict {r['verdict']!r}, the per-video statistics say {verdict!r}")
