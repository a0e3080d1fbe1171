"""Entry point of `make bench`: ``.venv/bin/python bench/run.py [--quick] [...]``.

See ``bench/README.md`` and ``.venv/bin/python bench/run.py --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python bench/run.py` puts bench/ on the path; the harness imports bench.* and tests.*
    sys.path.insert(0, str(ROOT))

from bench.harness import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
