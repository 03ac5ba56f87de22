"""The paper's Table 6: which extra visual and audio feature sets each ablation row fuses, and what it scored.

Every row also fuses the task's own Aff-Wild2 set (the paper's aff2_AU / aff2_EXPR / aff2_VA, our sets `au`,
`expr`, `va`); the extra visual sets are the encoders fine-tuned on other releases (`tasks.SOURCE_LABELS`, feature
sets named by their key: affn_VA = `affectnet_va`), the audio sets are `media.audio` kinds:

  row  affn_VA affn_EXPR raf_EXPR BP4D_AU  Hubert wav2vec vggish   VA      EXPR   AU
   1      x       x                          x                     0.5698  50.04  55.82
   2      x       x         x                x                     0.5721  50.96  56.37
   3      x       x         x                                      0.5685  49.71  56.94
   4      x       x         x        x       x                     0.5751  51.15  54.73
   5      x       x         x        x       x      x              0.5741  51.98  54.89
   6      x       x         x        x       x             x       0.5786  52.59  55.71

Scores on the official Validation_Set (mean CCC, F1 %): the best VA and EXPR rows fuse every visual set with
Hubert and VGGish, the best AU row drops BP4D and audio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from abaw_jax import tasks

VISUAL_SETS = ("affectnet_va", "affectnet_expr", "rafdb_expr", "bp4d_au")
AUDIO_SETS = ("hubert", "wav2vec2", "vggish")
AUDIO_PAPER_NAMES = {"hubert": "Hubert", "wav2vec2": "wav2vec", "vggish": "vggish"}
# The paper's track columns: VA, EXPR, AU.
TRACK_ORDER = tuple(reversed(tasks.TASK_KEYS))


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of Table 6: the extra sets it fuses and the paper's scores (fractions) per task name."""

    number: int
    visual: tuple[str, ...]
    audio: tuple[str, ...]
    paper: Mapping[str, float]

    def visual_sets(self, task_key: str) -> tuple[str, ...]:
        """The row's visual sets for one task: the task's own Aff-Wild2 set first."""
        return (task_key, *self.visual)


_BASE = ("affectnet_va", "affectnet_expr")
ROWS: dict[int, Row] = {
    row.number: row
    for row in (
        Row(1, _BASE, ("hubert",), {"VA": 0.5698, "EXPR": 0.5004, "AU": 0.5582}),
        Row(2, (*_BASE, "rafdb_expr"), ("hubert",), {"VA": 0.5721, "EXPR": 0.5096, "AU": 0.5637}),
        Row(3, (*_BASE, "rafdb_expr"), (), {"VA": 0.5685, "EXPR": 0.4971, "AU": 0.5694}),
        Row(4, VISUAL_SETS, ("hubert",), {"VA": 0.5751, "EXPR": 0.5115, "AU": 0.5473}),
        Row(5, VISUAL_SETS, ("hubert", "wav2vec2"), {"VA": 0.5741, "EXPR": 0.5198, "AU": 0.5489}),
        Row(6, VISUAL_SETS, ("hubert", "vggish"), {"VA": 0.5786, "EXPR": 0.5259, "AU": 0.5571}),
    )
}


def parse_rows(text: str) -> tuple[int, ...]:
    """Row numbers from "1,3,6" or "all" ('' for none), in table order; a clear error for anything else."""
    text = str(text).strip()
    if text == "all":
        return tuple(ROWS)
    numbers = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if not item.isdigit() or int(item) not in ROWS:
            raise ValueError(f"Table 6 rows are 1 to {len(ROWS)} (or 'all'); got {item!r} in {text!r}")
        numbers.append(int(item))
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"Table 6 row given twice in {text!r}")
    return tuple(sorted(numbers))


def paper_name(set_name: str) -> str:
    """The paper's name of a Table 6 column (affn_VA, Hubert, ...)."""
    if set_name in tasks.SOURCE_LABELS:
        return tasks.SOURCE_LABELS[set_name].paper_name
    return AUDIO_PAPER_NAMES[set_name]
