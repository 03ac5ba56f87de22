"""Task facts and media extensions are defined once (abaw_jax/tasks.py, abaw_jax/media/video.py)."""

import ast
import pathlib

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
