"""The paper's claims, each decided on two cells of a Table 5 with a paired bootstrap interval over videos.

A claim names its two cells as `setting [column]`. Its change is the difference of the two copied scores; its
interval and verdict come from `report.bootstrap` on the two cells' per-video statistics, resampling the videos
once for both sides. SDD's claims are "not measurable" when evaluate's SDD row routed no track of the set
(`reaction_tracks` 0), since the two cells are then the same predictions.

With M the configured ensemble (vote / soft / mean), "post" the full tuned post-processing (the sigma, then AU
thresholds / EXPR biases where tuned) and SDD in both cells when the run routes reaction videos:
  TMF helps (each task, each set)  static fine-tuned encoder per frame vs TMF official, both raw, on
                                   Validation_Set and (when the test tracks have labels) on the test tracks
  audio helps VA                   M [+ SDD] + post: visual only vs visual + audio
  SDD helps EXPR and VA            M + post vs M + SDD + post
  smoothing helps (each)           M [+ SDD] vs M [+ SDD] + smoothing (the tuned sigma alone)
  thresholds / biases help         M [+ SDD] + smoothing vs M [+ SDD] + smoothing + thresholds (AU) / biases (EXPR)
  the ensemble helps (each)        single member (mean of the general members) vs M, both post-processed, no SDD

On the synthetic release each claim's premise is a switch of the generator (`data.synthetic.Premises`; `PREMISES`
maps claims to switches). A built-in premise gives the method something to find, not a verdict: whether the claim
then holds is what the machinery is tested on (the claims study, README). The report says, per claim, whether the
release builds its premise in; such a verdict tests the machinery, not the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from abaw_jax.data import synthetic
from abaw_jax.report import bootstrap
from abaw_jax.report.stage_files import TaskFiles, relative
from abaw_jax.report.tables import (
    CI,
    MISSING,
    SUBMISSION_ROW,
    VISUAL_ONLY,
    WITH_AUDIO,
    ablation_columns,
    ablation_value,
    markdown_table,
    row_key,
    statistics,
)

NO_REACTION_TRACKS = "not measurable: no reaction track in the set"
NO_STATISTICS = "undecided: no per-video statistics"
DIFFERENT_VIDEOS = "undecided: the two cells score different videos"
POST_PARTS = ("thresholds", "biases")
CLAIMS_HEADER = [
    "claim",
    "task",
    "without",
    "with",
    "without score",
    "with score",
    "change",
    f"change {CI}",
    "videos",
    "verdict",
    "premise on this release",
]
# The synthetic generator's premise switches (`synthetic.Premises` fields) behind each claim kind.
PREMISES = {
    "tmf": ("temporal_context",),
    "audio": ("audio_arousal",),
    "sdd": ("reaction_priors", "reaction_mapping"),
    "smoothing": ("temporal_context",),
    "post": (),
    "ensemble": ("person_styles",),
}


def premise_cell(kind: str, premises: synthetic.Premises | None) -> str:
    """Whether the synthetic release builds a claim's premise in ('—' off the synthetic release)."""
    if premises is None:
        return MISSING
    switches = [s for s in PREMISES[kind] if getattr(premises, s)]
    if switches:
        return f"premise built in ({', '.join(switches)})"
    return "not built in" + (f" ({', '.join(PREMISES[kind])} off)" if PREMISES[kind] else "")


def parse_setting(setting: str) -> tuple[str, bool, str] | None:
    """(combiner, with SDD, post-processing '' / 'smoothing' / 'full') of an ensemble row of evaluate's ablation;
    None for other rows."""
    if setting.startswith(("single member", "static ", "TMF ")) or setting == SUBMISSION_ROW:
        return None
    combiner, *parts = setting.split(" + ")
    post = "full" if any(p in POST_PARTS for p in parts) else "smoothing" if "smoothing" in parts else ""
    return combiner, "SDD" in parts, post


@dataclasses.dataclass
class Claim:
    order: int  # the claim's place in the list (rows sort by it, then by task)
    kind: str  # a key of BUILT_IN
    claim: str
    task: str
    without: tuple[str, str] | None  # (Table 5 setting, column)
    with_: tuple[str, str] | None
    reason: str = ""  # why it cannot be checked, when a side is missing
    unmeasurable: bool = False  # both cells score the same predictions (SDD routed no track)


def _claims(files: TaskFiles) -> list[Claim]:
    """The paper's claims that concern this task, each on two Table 5 cells."""
    name, results = files.task.name, files.results
    settings = [r["setting"] for r in results["ablation"]]
    ensemble = {p: s for s in settings if (p := parse_setting(s)) is not None}
    method = next(iter(ensemble))[0] if ensemble else ""
    routed = any(sdd for (c, sdd, _) in ensemble if c == method)
    cell = lambda key, column=WITH_AUDIO: (ensemble[key], column) if key in ensemble else None
    post = "full" if (method, False, "full") in ensemble else "smoothing"
    full = (method, routed, post)
    claims = []
    for set_name in ("Validation_Set", "test"):
        static = f"static fine-tuned encoder, per frame ({set_name})"
        tmf = next((s for s in settings if s.startswith("TMF ") and s.endswith(f"({set_name})")), None)
        if set_name == "Validation_Set" or static in settings:
            claims.append(
                Claim(
                    0,
                    "tmf",
                    f"TMF helps on {set_name} (static fine-tuned encoder -> TMF)",
                    name,
                    (static, WITH_AUDIO) if static in settings else None,
                    (tmf, WITH_AUDIO) if tmf else None,
                    "" if static in settings else "no static predictions (evaluate ran without static_predictions)",
                )
            )
    if name == "VA":
        visual_has = files.visual is not None and ablation_value(files.visual, ensemble.get(full, "")) is not None
        claims.append(
            Claim(
                1,
                "audio",
                "audio helps VA (visual only -> visual + audio)",
                name,
                cell(full, VISUAL_ONLY) if visual_has else None,
                cell(full),
                "" if visual_has else f"no visual-only variant ({relative(files.paths['visual'])} absent)",
            )
        )
    if name in ("EXPR", "VA"):
        with_sdd = cell((method, True, post))
        claims.append(
            Claim(
                2,
                "sdd",
                f"SDD helps {name} (general members -> reaction videos routed to the reaction member)",
                name,
                cell((method, False, post)),
                with_sdd,
                "" if routed else "scene routing was off (scene_routing=none)",
                with_sdd is not None and _routes_no_track(results, with_sdd[0]),
            )
        )
    claims.append(
        Claim(
            3,
            "smoothing",
            "smoothing helps (the sigma tuned on out-of-fold predictions, alone)",
            name,
            cell((method, routed, "")),
            cell((method, routed, "smoothing")),
        )
    )
    if post == "full":
        what = "AU thresholds" if name == "AU" else "EXPR class biases"
        claims.append(
            Claim(
                4,
                "post",
                f"tuned {what} help (on top of smoothing)",
                name,
                cell((method, routed, "smoothing")),
                cell(full),
            )
        )
    single = next((s for s in settings if s.startswith("single member")), None)
    claims.append(
        Claim(
            5,
            "ensemble",
            "the ensemble helps (single member -> ensemble, both post-processed, no SDD)",
            name,
            (single, WITH_AUDIO) if single else None,
            cell((method, False, post)),
        )
    )
    return claims


def _routes_no_track(results: dict, setting: str) -> bool:
    """Whether evaluate's ablation row `setting` routed no track to the reaction member."""
    row = next((r for r in results.get("ablation", []) if r["setting"] == setting), {})
    return row.get("reaction_tracks") == 0


def decide(without: tuple[list[str], object] | None, with_: tuple[list[str], object] | None) -> tuple[str, str, str]:
    """(interval cell, videos cell, verdict) of a claim from its two sides' (videos, statistics)."""
    if without is None or with_ is None:
        return MISSING, MISSING, NO_STATISTICS
    videos, stats = with_
    try:
        paired = bootstrap.align(without[0], without[1], videos)
    except ValueError:
        return MISSING, MISSING, DIFFERENT_VIDEOS
    low, high = bootstrap.difference_interval(paired, stats)
    return bootstrap.format_interval(low, high), str(len(videos)), bootstrap.verdict(low, high, len(videos))


def claims_section(all_files: Sequence[TaskFiles], not_run: Sequence[str], premises: synthetic.Premises | None) -> str:
    """The claims table; `premises`: the synthetic release's generator switches, None for another release."""
    rows, unchecked = [], []
    claims = sorted(((claim, files) for files in all_files for claim in _claims(files)), key=lambda c: c[0].order)
    for claim, files in claims:
        if claim.without is None or claim.with_ is None:
            unchecked.append(f"- {claim.claim}, {claim.task}: not checked: {claim.reason or 'a row is missing'}.")
            continue
        columns = {column: (results, per_video) for column, results, per_video in ablation_columns(files)}
        sides = [columns[column] for _, column in (claim.without, claim.with_)]
        before = ablation_value(sides[0][0], claim.without[0])
        after = ablation_value(sides[1][0], claim.with_[0])
        interval, videos, verdict = decide(
            statistics(sides[0][1], row_key(claim.without[0])), statistics(sides[1][1], row_key(claim.with_[0]))
        )
        premise = premise_cell(claim.kind, premises)
        rows.append(
            (
                claim.claim,
                claim.task,
                f"{claim.without[0]} [{claim.without[1]}]",
                f"{claim.with_[0]} [{claim.with_[1]}]",
                before,
                after,
                f"{after - before:+.4f}",
                interval,
                videos,
                NO_REACTION_TRACKS if claim.unmeasurable else verdict,
                premise,
            )
        )
    text = (
        "## The paper's claims on this run\n\nEach claim rests on two cells of the task's Table 5 "
        f"(`setting [column]`). Its verdict comes from the paired {CI} of the change over videos, never from the "
        f"sign of the change alone: {bootstrap.HOLDS} (interval above 0), {bootstrap.DOES_NOT_HOLD} (below 0), "
        f"{bootstrap.UNDECIDED} (contains 0), {bootstrap.TOO_FEW} (fewer than {bootstrap.MIN_VIDEOS} videos). SDD "
        "cannot be measured on a set in which no track is a reaction video."
    )
    if premises is not None:
        text += (
            " This run is on the synthetic release, whose generator builds some premises in (last column): there "
            "a verdict tests this implementation's machinery, not the paper."
        )
    text += "\n\n" + markdown_table("Claims", CLAIMS_HEADER, rows)
    if unchecked or not_run:
        text += "\n" + "\n".join(unchecked + [f"- {t.upper()}: not run, no claims checked." for t in not_run]) + "\n"
    return text
