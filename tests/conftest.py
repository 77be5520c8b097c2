"""Shared test helpers: clips and shards made on the fly (no data is downloaded)."""
from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from avssl.data.encode import write_media

FLASH_VALUE = 250
BACKGROUND_VALUE = 30
ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``name`` (registered in sys.modules: its
    dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def flash_click_clip(
    seconds: float = 4.0, fps: float = 25.0, sample_rate: int = 16000, size: tuple[int, int] = (48, 64),
    flashes: tuple[int, ...] = (13, 37, 61, 88), **writer_options,
) -> bytes:
    """A clip whose frames flash white exactly when the audio clicks."""
    num_frames = int(round(seconds * fps))
    frames = np.full((num_frames, *size, 3), BACKGROUND_VALUE, np.uint8)
    audio = np.zeros(int(round(seconds * sample_rate)), np.float32)
    for k in flashes:
        if k < num_frames:
            frames[k] = FLASH_VALUE
            start = int(round(k / fps * sample_rate))
            audio[start : start + int(0.004 * sample_rate)] = 0.9
    writer_options.setdefault("gop_frames", int(fps))
    return write_media(None, frames, fps, audio, sample_rate, **writer_options)


def write_test_shards(out: Path, clips: list[bytes], per_shard: int, split: str = "train",
                      labels: list[int] | None = None, metas: list[dict] | None = None) -> Path:
    """Tar shards + manifest.json in the layout `avssl shards` writes."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for shard_id, first in enumerate(range(0, len(clips), per_shard)):
        name = f"{split}-{shard_id:06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for i in range(first, min(first + per_shard, len(clips))):
                meta = {"index": i, "id": f"clip{i:05d}", "label": labels[i] if labels else -1}
                if metas:
                    meta.update(metas[i])
                for ext, payload in (("mp4", clips[i]), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"clip{i:05d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        entries.append({"file": name, "num_samples": min(per_shard, len(clips) - first)})
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"splits": {}}
    manifest["splits"][split] = {"shards": entries, "num_samples": len(clips)}
    manifest_path.write_text(json.dumps(manifest))
    return out


def shard_samples(out: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """{split: {key: {entry: bytes}}} of every shard the manifest lists."""
    manifest = json.loads((out / "manifest.json").read_text())
    result: dict[str, dict[str, dict[str, bytes]]] = {}
    for split, record in manifest["splits"].items():
        samples = result.setdefault(split, {})
        for entry in record["shards"]:
            with tarfile.open(out / entry["file"]) as tar:
                for member in tar:
                    key, extension = member.name.split(".", 1)
                    samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return result


def make_synth_shards(root: Path, num_videos: int = 24, size: int = 32,
                      split: tuple[float, float, float] = (0.5, 0.25, 0.25), seconds: float = 2.0,
                      shard_size: int = 8) -> Path:
    """A tiny synthetic set through `avssl synth` and `avssl shards` (labels, ground truth
    sidecars); returns the shards folder."""
    from avssl.cli import main

    assert main(["synth", "--out", str(root / "synth"), "--num-videos", str(num_videos), "--seconds", str(seconds),
                 "--size", str(size), "--split", *(str(f) for f in split)]) == 0
    assert main(["shards", "--videos", str(root / "synth" / "videos"), "--labels", str(root / "synth" / "labels.csv"),
                 "--out", str(root / "shards"), "--short-side", str(size), "--shard-size", str(shard_size)]) == 0
    return root / "shards"


@pytest.fixture(scope="session")
def flash_clip() -> bytes:
    return flash_click_clip()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Two cores, shared with DataLoader workers: one intra-op thread is fastest here."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
