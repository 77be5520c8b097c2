"""The linter's configuration: what `make lint` checks."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_skips_the_top_level_outputs_only(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    names = ["runs/demo/plot.py", "data/raw.py", "avssl/data/decode.py", "tests/data/test_decode.py", "top.py"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    listed = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files", "."], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split()
    files = sorted(Path(line).relative_to(tmp_path).as_posix() for line in listed if line.endswith(".py"))
    assert files == ["avssl/data/decode.py", "tests/data/test_decode.py", "top.py"]
