"""Shard writer throughput: `avssl shards` against the ceiling that ffmpeg's own command-line
transcode of the same inputs to the same settings sets (docs/benchmarks.md, "Shard writer
throughput").

    python scripts/bench_shards.py [--sets synth,web] [--videos 16] [--repeats 3] [--profile]

Both run on one core: the writer with ``--workers 1`` (one encoding process) and ffmpeg
with ``-threads 1 -filter_threads 1``, one file after the other, each process started per
file as a script would. They alternate (writer, ffmpeg, writer, …) ``--repeats`` times on the
same inputs; the median of each is reported, and the ratio writer / ffmpeg, which is what
counts on a shared machine. The writer's time is the whole `avssl shards` run (planning,
worker start-up, probing, tar writing, manifest), ffmpeg's only the transcodes; a third
column times the writer's per-video work alone (``reencode_video`` in this process), the
steady state of a long run whose start-up (~0.5-1 s: a spawned worker and its imports) is
spread over thousands of videos.

Same settings on both sides: short side 128 (area scaling), 25 fps constant, libx264
veryfast crf 23 with a keyframe every 25 frames (no B-pyramid, no mbtree, no scene cut),
yuv420p; the audio as 16 kHz mono int16 PCM (the writer's default ``pcm`` format: a raw
``.pcm`` file beside a video-only mp4 for ffmpeg).

Input sets, made here:
  synth  `avssl synth` videos (4 s, 64x64, 25 fps, mono AAC 16 kHz): upscaled to 128.
  web    web-like clips made with ffmpeg's lavfi sources: 10 s, 640x360 at 30 fps with
         per-pixel noise, stereo AAC at 44.1 kHz, x264's default keyframe interval (250),
         the "as downloaded" format of docs/decoding.md.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avssl.cli import main as avssl
from avssl.data.shards import ShardSettings

SETTINGS = ShardSettings()


def ensure_ffmpeg() -> str:
    if shutil.which("ffmpeg") is None:
        print("installing ffmpeg (apt-get) for the ceiling measurement…", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "ffmpeg"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("ffmpeg") or "ffmpeg"


def make_synth(folder: Path, num_videos: int) -> Path:
    assert avssl(["synth", "--out", str(folder), "--num-videos", str(num_videos), "--seconds", "4",
                  "--size", "64"]) == 0
    return folder / "videos"


def make_web(ffmpeg: str, folder: Path, num_videos: int) -> Path:
    videos = folder / "videos"
    videos.mkdir(parents=True)
    for i in range(num_videos):
        subprocess.run(
            [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=10",
             "-f", "lavfi", "-i", f"sine=frequency={220 + 40 * i}:sample_rate=44100:duration=10",
             "-vf", f"noise=alls=12:allf=t+u:all_seed={i}", "-ac", "2", "-c:v", "libx264", "-preset", "fast",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest", str(videos / f"clip{i:03d}.mp4")],
            check=True)
    return videos


def ffmpeg_command(ffmpeg: str, source: Path, out: Path) -> list[str]:
    """The writer's transcode as one ffmpeg command: video-only mp4 + 16 kHz mono s16 PCM."""
    s = SETTINGS
    scale = (f"scale='if(lte(iw,ih),{s.short_side},-2)':'if(lte(iw,ih),-2,{s.short_side})':flags=area")
    x264 = f"b-pyramid=none:mbtree=0:keyint={s.gop_frames}:min-keyint={s.gop_frames}:scenecut=0"
    return [ffmpeg, "-v", "error", "-y", "-threads", "1", "-filter_threads", "1", "-i", str(source),
            "-map", "0:v:0", "-vf", f"fps={s.fps:g},{scale}", "-c:v", "libx264", "-preset", "veryfast",
            "-crf", "23", "-threads", "1", "-x264-params", x264, "-pix_fmt", "yuv420p", "-an",
            str(out.with_suffix(".mp4")),
            "-map", "0:a:0", "-ac", "1", "-ar", str(s.sample_rate), "-f", "s16le", str(out.with_suffix(".pcm"))]


def time_ffmpeg(ffmpeg: str, videos: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for video in videos:
        subprocess.run(ffmpeg_command(ffmpeg, video, out / video.stem), check=True)
    return time.perf_counter() - start


def time_writer(videos_dir: Path, out: Path) -> tuple[float, float]:
    """(seconds, hours of video packed) of one `avssl shards --workers 1` run."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    code = avssl(["shards", "--videos", str(videos_dir), "--out", str(out), "--workers", "1"])
    seconds = time.perf_counter() - start
    assert code == 0
    return seconds, json.loads((out / "manifest.json").read_text())["hours"]


def time_reencode(videos: list[Path]) -> float:
    """The writer's per-video work alone (``reencode_video`` in this process, one after the
    other): the steady state of a long run, without its fixed start-up (worker spawn, imports)."""
    from avssl.data.shards import reencode_video

    start = time.perf_counter()
    for video in videos:
        reencode_video(video, SETTINGS)
    return time.perf_counter() - start


def profile_encoding(videos: list[Path]) -> str:
    """cProfile of the per-video work (reencode_video) in this process: where the time goes."""
    from avssl.data.shards import reencode_video

    profiler = cProfile.Profile()
    profiler.enable()
    for video in videos:
        reencode_video(video, SETTINGS)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def bench_set(name: str, videos_dir: Path, ffmpeg: str, work: Path, repeats: int, profile: bool) -> dict:
    videos = sorted(videos_dir.glob("*.mp4"))
    writer_times, per_video_times, ffmpeg_times, hours = [], [], [], 0.0
    for _ in range(repeats):  # alternating, so that a busy spell of the machine hits both
        seconds, hours = time_writer(videos_dir, work / f"{name}-shards")
        writer_times.append(seconds)
        ffmpeg_times.append(time_ffmpeg(ffmpeg, videos, work / f"{name}-ffmpeg"))
        per_video_times.append(time_reencode(videos))
    writer, ceiling = statistics.median(writer_times), statistics.median(ffmpeg_times)
    per_video = statistics.median(per_video_times)
    result = {
        "set": name, "videos": len(videos), "hours": hours,
        "writer_s": [round(t, 2) for t in writer_times], "ffmpeg_s": [round(t, 2) for t in ffmpeg_times],
        "writer_videos_per_s": len(videos) / writer, "ffmpeg_videos_per_s": len(videos) / ceiling,
        "writer_hours_per_hour": hours * 3600 / writer, "ffmpeg_hours_per_hour": hours * 3600 / ceiling,
        "ratio": ceiling / writer,
        "per_video_s": [round(t, 2) for t in per_video_times], "per_video_ratio": ceiling / per_video,
    }
    if profile:
        result["profile"] = profile_encoding(videos)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="synth,web", help="comma-separated: synth, web")
    parser.add_argument("--videos", type=int, default=16, help="videos per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the writer's per-video work")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    ffmpeg = ensure_ffmpeg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        work = Path(tmp)
        for name in args.sets.split(","):
            make = {"synth": lambda: make_synth(work / "synth", args.videos),
                    "web": lambda: make_web(ffmpeg, work / "web", args.videos)}[name]
            results.append(bench_set(name, make(), ffmpeg, work, args.repeats, args.profile))
    print("\n| set | videos | hours | writer videos/s | ffmpeg videos/s | writer h/h | ffmpeg h/h | writer/ffmpeg |"
          " per-video work/ffmpeg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['set']} | {r['videos']} | {r['hours']:.4f} | {r['writer_videos_per_s']:.2f} | "
              f"{r['ffmpeg_videos_per_s']:.2f} | {r['writer_hours_per_hour']:.1f} | {r['ffmpeg_hours_per_hour']:.1f} | "
              f"{r['ratio']:.0%} | {r['per_video_ratio']:.0%} |")
    for r in results:
        print(f"{r['set']}: writer runs {r['writer_s']} s, ffmpeg runs {r['ffmpeg_s']} s, "
              f"per-video work {r['per_video_s']} s")
        if "profile" in r:
            print(r["profile"])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
