"""``python -m reports.ci``: the earlier name of ``python -m benchmark ci``, kept so that CI scripts written
for it keep working. It runs that command with the same arguments (``python -m benchmark ci --help``)."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Replaces this process: the CI program sits above the CLI, which a reports module must not import.
    os.execv(sys.executable, [sys.executable, "-m", "benchmark", "ci", *sys.argv[1:]])
