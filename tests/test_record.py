"""What reading records costs: `normbench report` must not load torch."""

from __future__ import annotations

import subprocess
import sys


def test_the_report_module_imports_without_torch() -> None:
    check = "import sys, normbench.run.report; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
