"""`--json_out`, the flag the benchmarks share: `benchmarks.gpu_suite` passes it to collect each one's figures."""

from __future__ import annotations

import json
from typing import Any

from absl import flags

JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def write(results: dict[str, Any]) -> None:
    """Writes `results` to --json_out when it is given."""
    if JSON_OUT.value:
        with open(JSON_OUT.value, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
