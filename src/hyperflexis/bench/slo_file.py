"""Write `SLOClasses` as the JSON file `hyperflexis serve --slo-classes` reads, so a benchmark's
server and client agree on every class (the server rejects class names it does not know, and
takes `late` and the defaults from its own file)."""

from __future__ import annotations

import json
from pathlib import Path

from hyperflexis.core.slo import SLOClasses


def write_slo_classes(classes: SLOClasses, path: str | Path) -> Path:
    """Write `classes` to `path` (JSON, `SLOClasses.from_file` reads it back) and return it."""
    doc = {
        "classes": {
            c.name: {"ttft_s": c.ttft_s, "tpot_s": c.tpot_s, "priority": c.priority, "late": c.late}
            for c in classes.values()
        },
        "default": classes.default,
        "api_keys": dict(classes.api_keys),
    }
    target = Path(path)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target
