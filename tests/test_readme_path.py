"""The README's "Using it on your videos" block, run as written on clips a user might bring:
20 videos of 80–96 px in two sub-folders, stereo AAC at 44.1 and 48 kHz, a labels file
without a split column. shards → smoke pretrain → export → probe, each exit 0, the probe's
table printed. Only the lines that need GPUs or a scheduler are left out, and the export
takes the smoke run's checkpoint in place of the real run's."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from avssl.cli import main
from avssl.data.encode import write_media

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("drums", "violin", "dog", "engine")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it on your videos"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line) for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.strip()]


def user_clips(folder: Path, labels: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["id,label"]
    for i in range(20):
        category = i % len(CLASSES)
        height, width = (80, 96) if i % 2 else (96, 80)
        rate, fps, seconds = (44100 if i % 3 else 48000), 25.0, 3.0
        frames = np.full((int(fps * seconds), height, width, 3), 40, np.uint8)
        frames[..., category % 3] = 90 + 40 * category
        frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
        t = np.arange(int(rate * seconds)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 220 * (category + 1) * t)
        sub = folder / ("kitchen" if i < 10 else "garden")
        sub.mkdir(parents=True, exist_ok=True)
        write_media(sub / f"clip{i:02d}.mp4", frames, fps, np.stack([tone, 0.8 * tone]).astype(np.float32), rate)
        rows.append(f"{sub.name}/clip{i:02d},{CLASSES[category]}")
    labels.write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_the_readme_path_on_a_users_own_clips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    user_clips(tmp_path / "my_videos", tmp_path / "labels.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    commands = readme_commands()
    recipe = next(c.split("=", 1)[1] for c in commands if c.startswith("RECIPE="))
    ran = []
    for command in commands:
        if command.startswith("RECIPE=") or command.startswith("sbatch") or "smoke=true" not in command and \
                command.startswith("avssl pretrain"):
            continue  # a variable, or a GPU / scheduler run
        command = (command.replace("$RECIPE", recipe).replace("/data/my_videos", "my_videos")
                   .replace("/data/shards", "shards").replace("--workers 32", "--workers 1")
                   .replace("recipes/", f"{ROOT}/recipes/"))
        if command.startswith("avssl export"):  # the smoke run's checkpoint stands in for the real run's
            command = re.sub(r"runs/([^/]+)/checkpoints", r"runs/\1-smoke/checkpoints", command)
        if "smoke=true" in command:
            command += " trainer.precision=32-true trainer.enable_progress_bar=false"  # (*) in the README
        argv = shlex.split(command)
        assert argv[0] == "avssl", command
        assert main(argv[1:]) == 0, command
        ran.append(argv[1])
    assert ran == ["shards", "pretrain", "export", "probe"]
    out = capsys.readouterr().out
    assert "linear probe of exported/ (test split, top-1 %):" in out
    assert re.search(r"^both\s+\d+\.\d", out, re.M), out
