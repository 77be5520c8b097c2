"""`make demo`: synthetic videos → shards → AVC pretraining → linear probes of random-init
and pretrained encoders → exported checkpoint → results table and results.json.

Every step is an `avssl` verb; a step whose output already exists is not redone
(delete the demo folder to start over).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from avssl.cli import main as avssl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def run(*argv: str) -> None:
    code = avssl(list(argv))
    if code != 0:
        raise SystemExit(f"avssl {argv[0]} failed with exit code {code}")


def main() -> None:
    import torch

    # Two cores shared by the training process and the loader workers: one intra-op
    # thread in the training process is fastest (OpenMP spinning starves the workers).
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--num-videos", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out: Path = args.out
    synth, shards, pretrain_dir = out / "synth", out / "shards", out / "avc"
    timings = {}

    t = step("1/5 synthetic audio-visual set")
    if not (synth / "labels.csv").exists():
        run("synth", "--out", str(synth), "--num-videos", str(args.num_videos), "--workers", str(args.workers))
    timings["synth"] = time.time() - t

    t = step("2/5 shards")
    if not (shards / "manifest.json").exists():
        run("shards", "--videos", str(synth / "videos"), "--labels", str(synth / "labels.csv"), "--out", str(shards),
            "--short-side", "64", "--workers", str(args.workers))
    manifest = json.loads((shards / "manifest.json").read_text())
    timings["shards"] = time.time() - t

    t = step("3/5 AVC pretraining (small encoders, CPU)")
    recipe = str(RECIPES / "synth" / "avc_small.yaml")
    common = [f"data.shards={shards}", f"data.num_workers={args.workers}"]
    export = pretrain_dir / "export"
    if not (export / "model.json").exists():
        run("pretrain", recipe, *common, f"run_dir={pretrain_dir}", f"trainer.max_epochs={args.epochs}")
    timings["pretrain"] = time.time() - t

    t = step("4/5 linear probes: random init vs AVC-pretrained")
    probe_recipe = str(RECIPES / "eval" / "synth_probe.yaml")
    cache = f"probe.cache_dir={out / 'feature_cache'}"
    run("probe", probe_recipe, *common, cache, "probe.encoders=random", f"run_dir={out / 'probe_random'}")
    run("probe", probe_recipe, *common, cache, f"probe.encoders={export}", f"run_dir={out / 'probe_avc'}")
    timings["probe"] = time.time() - t

    step("5/5 results")
    random_metrics = json.loads((out / "probe_random" / "metrics.json").read_text())
    avc_metrics = json.loads((out / "probe_avc" / "metrics.json").read_text())
    val_accuracy = _last_val_accuracy(pretrain_dir)
    results = {"avc": {
        "probe": {m: {"random": random_metrics[m]["test_video_top1"], "pretrained": avc_metrics[m]["test_video_top1"]}
                  for m in ("video", "audio", "both")},
        "pretext": {"val_accuracy": val_accuracy},
    }}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"data: {manifest['num_samples']} videos ({manifest['hours']:.2f} h) in "
          f"{sum(len(s['shards']) for s in manifest['splits'].values())} shards, "
          f"{len(manifest['skipped'])} skipped")
    print(f"AVC held-out correspondence accuracy: {val_accuracy:.3f} (chance 0.5)")
    print("linear probe, synthetic test split, video-level top-1 % (chance "
          f"{100 / max(len(manifest.get('classes') or [1]), 1):.1f}%):")
    print(f"{'encoder':<8} {'random init':>12} {'AVC':>8} {'gain':>7}")
    for modality, row in results["avc"]["probe"].items():
        print(f"{modality:<8} {row['random']:>12.1f} {row['pretrained']:>8.1f} {row['pretrained'] - row['random']:>+7.1f}")
    print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"written: {out / 'results.json'}")


def _last_val_accuracy(run_dir: Path) -> float:
    import csv

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    values = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    if not values:
        raise SystemExit(f"no val/accuracy in {run_dir / 'csv' / 'metrics.csv'}")
    return values[-1]


if __name__ == "__main__":
    main()
