"""Loader throughput: clips/s of 16×112×112 frames + 1 s of log-mel from shards, next to
the ceiling that ffmpeg's single-thread decoder sets on the same videos.

The timed path: the loader (workers decode, crop, flip) and the log-mel of the batch
(gain, log-mel, masks: `AudioBatchTransform`, on the device in training, here on the CPU in
the main process). Colour jitter and normalisation of the video are device work and not
timed (a 16-frame colour jitter costs ~8 ms on a CPU core and nothing on a GPU).

    python scripts/bench_loader.py [--shards DIR] [--clips 1200] [--rounds 3] [--sensor-noise S]

Without --shards it writes its own: synthetic 10-s videos at 240×240 with camera-like
sensor noise, packed with the default `avssl shards` settings (short side 128, 25 fps,
keyframe every 1 s, 16 kHz mono PCM beside the mp4).

ceiling (clips/s) = ffmpeg frames/s (`ffmpeg -threads 1 -i x.mp4 -f null -`: every stream
the mp4 holds) / frames each window must decode (from the keyframe before its start to
its last frame, averaged over the windows the loader actually drew).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avssl.cli import main as avssl
from avssl.data.datamodule import ShardList, ShardStream, make_loader
from avssl.data.sampling import ViewSampler
from avssl.data.transforms import AudioBatchTransform
from avssl.data.views import AudioView, VideoView, ViewSpec

SENSOR_NOISE = 16.0  # calibrated: ffmpeg then decodes the 128p shards at docs/decoding.md's rate for real video
SPEC = ViewSpec(video=VideoView(num_frames=16, fps=25.0, size=112), audio={"audio": AudioView(seconds=1.0)})


def ensure_ffmpeg() -> str:
    if shutil.which("ffmpeg") is None:
        print("installing ffmpeg (apt-get) for the ceiling measurement…", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "ffmpeg"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("ffmpeg") or "ffmpeg"


def make_shards(work: Path, num_videos: int, sensor_noise: float) -> Path:
    """Synthetic 10-s clips at 240×240, packed with the default `avssl shards` settings.
    ``sensor_noise`` (per-pixel, per-frame std, 0–255) stands in for camera noise: flat
    synthetic shapes decode about twice as fast as real video, which would inflate the
    ceiling (see docs/benchmarks.md)."""
    from avssl.data.synth import SynthConfig, write_dataset

    tag = f"noise{sensor_noise:g}"
    synth, shards = work / f"synth_{tag}", work / f"shards_{tag}"
    if not (synth / "labels.csv").exists():
        cfg = SynthConfig(seconds=10.0, size=240, frame_noise=sensor_noise)
        write_dataset(synth, num_videos, cfg, split_fractions=(1.0, 0.0, 0.0), workers=2)
    if not (shards / "manifest.json").exists():
        avssl(["shards", "--videos", str(synth / "videos"), "--out", str(shards), "--workers", "2"])
    return shards


def ffmpeg_frames_per_second(ffmpeg: str, shards: ShardList, max_videos: int = 20) -> float:
    """Single-thread decode speed (video + audio) over the shard videos, frames/s."""
    frames = seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        with tarfile.open(shards.files[0]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".mp4") and len(paths) < max_videos:
                    path = Path(tmp) / Path(member.name).name
                    path.write_bytes(tar.extractfile(member).read())
                    paths.append(path)
        for path in paths:
            out = subprocess.run([ffmpeg, "-hide_banner", "-benchmark", "-threads", "1", "-i", str(path),
                                  "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
            frame_count = int(re.findall(r"frame=\s*(\d+)", out)[-1])
            utime = float(re.search(r"utime=([\d.]+)s", out).group(1))
            stime = float(re.search(r"stime=([\d.]+)s", out).group(1))
            frames += frame_count
            seconds += utime + stime
    return frames / seconds


def measure(shards: ShardList, workers: int, clips: int, pin_one_core: bool) -> tuple[float, list[float]]:
    """clips/s over ``clips`` clips after a warm-up, and the window start times drawn."""
    if pin_one_core:
        os.sched_setaffinity(0, {0})
        torch.set_num_threads(1)
    stream = ShardStream(shards, ViewSampler(SPEC, train=True), batch_size=16, num_workers=workers,
                         shuffle=True, pad=False, seed=1)
    loader = make_loader(stream, workers)
    logmel = AudioBatchTransform(SPEC.mel)  # the device's log-mel: timed too
    starts: list[float] = []
    arrivals: list[tuple[float, int]] = []  # (time, clips) per batch
    epoch = 0
    while sum(n for _, n in arrivals) < clips:  # as many epochs as it takes (one clip per video each)
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            logmel(batch["audio"], train=True)
            arrivals.append((time.perf_counter(), batch["index"].numel()))
            starts += batch["t_video"].tolist()
        epoch += 1
    # Steady state: skip the first third, which includes worker start-up and the batches
    # the workers prefetched before the clock started.
    first = max(len(arrivals) // 3, 1)
    elapsed = arrivals[-1][0] - arrivals[first - 1][0]
    rate = sum(n for _, n in arrivals[first:]) / elapsed
    if pin_one_core:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return rate, starts


def frames_per_window(starts: list[float], fps: float = 25.0, gop: int = 25, num_frames: int = 16) -> float:
    first = np.round(np.asarray(starts) * fps).astype(int)
    keyframe = (first // gop) * gop
    return float(np.mean(first + num_frames - keyframe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_loader"))
    parser.add_argument("--num-videos", type=int, default=120)
    parser.add_argument("--clips", type=int, default=1200, help="clips per loader measurement")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling + loader measurements, interleaved")
    parser.add_argument("--sensor-noise", type=float, default=SENSOR_NOISE,
                        help="per-pixel per-frame noise of the generated videos (0-255 std); 2 = the synthetic set's "
                             f"default (flat, fast to decode); {SENSOR_NOISE:g} = decodes at real 128p video's rate")
    args = parser.parse_args()
    shard_dir = args.shards or make_shards(args.work, args.num_videos, args.sensor_noise)
    shards = ShardList.from_manifest(shard_dir, "train")
    ffmpeg = ensure_ffmpeg()
    modes = (("in-process, 1 core", 0, True), ("1 worker", 1, False), ("2 workers", 2, False))
    # Rounds interleave the ceiling and the loaders: a shared machine's speed drifts by
    # ±10 % over minutes, which a single ceiling measured first would put into the ratios.
    rounds: list[dict[str, float]] = []
    all_starts: list[float] = []
    for round_number in range(args.rounds):
        ffmpeg_fps = ffmpeg_frames_per_second(ffmpeg, shards)
        rates = {}
        for label, workers, pin in modes:
            rates[label], starts = measure(shards, workers, args.clips, pin)
            all_starts += starts
        rounds.append({"ffmpeg_frames_per_second": ffmpeg_fps, **rates})
        print(f"round {round_number + 1}/{args.rounds}: ffmpeg {ffmpeg_fps:.0f} frames/s, "
              + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
    window_frames = frames_per_window(all_starts)
    print(f"\nshards: {shard_dir} ({shards.num_samples} videos); frames per window (keyframe → last frame): "
          f"{window_frames:.1f}")
    print(f"{'loader':<20} {'clips/s':>8} {'ceiling':>8} {'ratio':>6}   "
          f"(median of {args.rounds} rounds; ratio per round)")
    rows = []
    for label, _, _ in modes:
        cores = 2 if label == "2 workers" else 1
        ceilings = [r["ffmpeg_frames_per_second"] / window_frames * cores for r in rounds]
        ratios = [r[label] / c for r, c in zip(rounds, ceilings)]
        rate, ceiling, ratio = (float(np.median(x)) for x in ([r[label] for r in rounds], ceilings, ratios))
        rows.append((label, rate))
        print(f"{label:<20} {rate:>8.1f} {ceiling:>8.0f} {ratio:>6.0%}   "
              + " ".join(f"{x:.0%}" for x in ratios))
    ffmpeg_fps = float(np.median([r["ffmpeg_frames_per_second"] for r in rounds]))
    ceiling = ffmpeg_fps / window_frames
    result = {"shards": str(shard_dir), "sensor_noise": None if args.shards else args.sensor_noise,
              "ffmpeg_frames_per_second": ffmpeg_fps, "frames_per_window": window_frames,
              "ceiling_clips_per_second_per_core": ceiling, "loader": dict(rows), "rounds": rounds}
    (Path(args.work) / "bench_loader.json").parent.mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "bench_loader.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
