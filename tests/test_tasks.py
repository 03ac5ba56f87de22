"""Task facts and media extensions are defined once (abaw_jax/tasks.py, abaw_jax/media/video.py)."""

import ast
import pathlib

import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.media import video

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("abaw_jax", "configs", "data_prep", "benchmarks")
HOMES = {"task keys": ROOT / "abaw_jax" / "tasks.py", "image extensions": ROOT / "abaw_jax" / "media" / "video.py"}


def test_task_keys_are_the_lower_case_names():
    assert tasks.TASK_KEYS == ("au", "expr", "va")
    assert all(tasks.get_task(key).key == key for key in tasks.TASK_KEYS)


def _literal_strings(node: ast.AST) -> set[str]:
    elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
    return {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _definitions() -> list[tuple[str, str]]:
    """(what, file:line) of every tuple / list / set / dict literal holding all task keys or two image extensions."""
    found = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                    continue
                strings = _literal_strings(node)
                for what, hit in (
                    ("task keys", set(tasks.TASK_KEYS) <= strings),
                    ("image extensions", len(strings & set(video.IMAGE_EXTENSIONS)) >= 2),
                ):
                    if hit and path != HOMES[what]:
                        found.append((what, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


@pytest.mark.parametrize("what", sorted(HOMES))
def test_defined_once(what):
    assert [where for kind, where in _definitions() if kind == what] == [], (
        f"{what} spelled out again; import them from {HOMES[what].relative_to(ROOT)}"
    )


# The source label mappings as the releases document them (written out here, independently of tasks.py).
AFFECTNET_CODES = (
    "Neutral",
    "Happy",
    "Sad",
    "Surprise",
    "Fear",
    "Disgust",
    "Anger",
    "Contempt",
    "None",
    "Uncertain",
    "No-Face",
)
RAFDB_CODES = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}
SAME_CLASS = {"Happy": "Happiness", "Sad": "Sadness"}


def test_affectnet_expressions_map_by_meaning_and_drop_four_codes():
    mapping = tasks.get_source_labels("affectnet_expr")
    table = mapping.lookup()
    for code, name in enumerate(AFFECTNET_CODES):
        target = SAME_CLASS.get(name, name)
        if target in tasks.EXPR.label_names:
            assert tasks.EXPR.label_names[table[code]] == target
        else:
            assert table[code] == -1
    assert mapping.dropped == ("Contempt", "None", "Uncertain", "No-Face")
    assert mapping.missing == ("Other",)


def test_rafdb_expressions_map_by_name_and_lack_other():
    mapping = tasks.get_source_labels("RAFDB_EXPR")
    assert {code: tasks.EXPR.label_names[mapping.lookup()[code]] for code in RAFDB_CODES} == RAFDB_CODES
    assert mapping.dropped == () and mapping.missing == ("Other",)
    assert mapping.lookup()[0] == -1  # RAF-DB labels start at 1


def test_bp4d_aus_map_by_number_and_miss_au25_au26():
    mapping = tasks.get_source_labels("bp4d_au")
    table = mapping.lookup()
    for number, name in mapping.codes.items():
        assert name == f"AU{number}"
        assert (tasks.AU.label_names[table[number]] == name) if name in tasks.AU.label_names else table[number] == -1
    assert mapping.missing == ("AU25", "AU26") and mapping.dropped == ("AU14", "AU17")
    assert tasks.get_source_labels("affectnet_va").missing == ()
    with pytest.raises(ValueError, match="unknown training source 'disfa_au'"):
        tasks.get_source_labels("disfa_au")


def test_missing_labels_from_the_training_frames():
    expr = np.array([0, 1, 2, 3, 4, 5, 6, 7, 1])
    valid = np.ones(9, bool)
    valid[7] = False  # the one "Other" frame is invalid
    assert tasks.missing_labels("EXPR", expr, valid) == ("Other",)
    message = tasks.missing_labels_message("EXPR", expr, valid, "RAF-DB")
    assert message.startswith("RAF-DB has no EXPR training label for Other: the other 7 are trained")
    au = np.zeros((4, 12), np.int64)
    au[:, 10:] = -1
    au[0, 0] = -1
    assert tasks.missing_labels("AU", au, np.ones(4, bool)) == ("AU25", "AU26")
    assert "masked out of the loss and the metric" in tasks.missing_labels_message("AU", au, np.ones(4, bool), "BP4D")
    assert tasks.missing_labels_message("AU", np.zeros((2, 12)), np.ones(2, bool), "x") is None
    assert tasks.missing_labels("VA", np.zeros((3, 2)), np.zeros(3, bool)) == ("valence", "arousal")
