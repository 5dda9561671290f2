"""Print, check or write the settings table of docs/configuration.md, generated from ``swan_anomaly.config.Settings``.

python scripts/settings_table.py           # print it
python scripts/settings_table.py --write   # replace the table between the markers in docs/configuration.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from swan_anomaly.config import settings_table  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
MARKERS = re.compile(r"(<!-- settings-table:begin -->\n).*?(<!-- settings-table:end -->)", re.S)


def main(argv: list[str]) -> int:
    table = settings_table()
    if "--write" not in argv:
        print(table, end="")
        return 0
    text = DOC.read_text()
    if not MARKERS.search(text):
        print(f"{DOC}: no <!-- settings-table:begin/end --> markers", file=sys.stderr)
        return 1
    DOC.write_text(MARKERS.sub(lambda m: m.group(1) + table + m.group(2), text))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
