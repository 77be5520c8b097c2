"""`make demo`: synthetic videos → shards → pretraining (AVC; `--methods all` adds AVTS,
AVID+CMA and SeLaVi, each with the same budget) → linear probes of random-init and
pretrained encoders → exported checkpoints → downstream evaluation of the first method
(fine-tuning, sound-source and event localization against random init, mix-and-separate)
→ results table and results.json.

Every step is an `avssl` verb; a step whose output already exists is not redone
(delete the demo folder to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

from avssl.cli import main as avssl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# results.json key → CPU recipe, and the held-out pretext metric reported for it.
METHODS = {
    "avc": ("avc_small.yaml", "val/accuracy"),
    "avts": ("avts_small.yaml", "val/sync_accuracy"),
    "avid_cma": ("avid_cma_small.yaml", "val/retrieval_top1"),
    "selavi": ("selavi_small.yaml", "val/nmi_best_head"),
}


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for a step that trains from memory, with no
    loader workers to share the cores with; restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    parser.add_argument("--methods", default="avc", help=f"comma-separated from {sorted(METHODS)}, or 'all'")
    parser.add_argument("--downstream", default="finetune,localize,separate",
                        help="downstream steps after pretraining (comma-separated; '' for none); "
                             "'events' adds AVE-style event localization to the localize step (~2 min more)")
    args = parser.parse_args()
    out: Path = args.out
    synth, shards = out / "synth", out / "shards"
    timings = {}

    t = step("1/6 synthetic audio-visual set")
    if not (synth / "labels.csv").exists():
        run("synth", "--out", str(synth), "--num-videos", str(args.num_videos), "--workers", str(args.workers))
    timings["synth"] = time.time() - t

    t = step("2/6 shards")
    if not (shards / "manifest.json").exists():
        run("shards", "--videos", str(synth / "videos"), "--labels", str(synth / "labels.csv"), "--out", str(shards),
            "--short-side", "64", "--workers", str(args.workers))
    manifest = json.loads((shards / "manifest.json").read_text())
    timings["shards"] = time.time() - t

    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {sorted(METHODS)} or 'all'")
    common = [f"data.shards={shards}", f"data.num_workers={args.workers}"]
    probe_recipe = str(RECIPES / "eval" / "synth_probe.yaml")
    cache = f"probe.cache_dir={out / 'feature_cache'}"

    t = step("3/6 linear probe of randomly initialised encoders")
    run("probe", probe_recipe, *common, cache, "probe.encoders=random", f"run_dir={out / 'probe_random'}")
    random_metrics = json.loads((out / "probe_random" / "metrics.json").read_text())
    timings["probe_random"] = time.time() - t

    results: dict = {}
    for method in methods:
        recipe, metric = METHODS[method]
        t = step(f"4/6 {method}: pretraining (small encoders, CPU), then its linear probe")
        pretrain_dir = out / method
        export = pretrain_dir / "export"
        if not (export / "model.json").exists():
            run("pretrain", str(RECIPES / "synth" / recipe), *common, f"run_dir={pretrain_dir}",
                f"trainer.max_epochs={args.epochs}")
        run("probe", probe_recipe, *common, cache, f"probe.encoders={export}", f"run_dir={out / f'probe_{method}'}")
        metrics = json.loads((out / f"probe_{method}" / "metrics.json").read_text())
        log = _metrics_log(pretrain_dir)
        entry = {
            "probe": {m: {"random": random_metrics[m]["test_video_top1"], "pretrained": metrics[m]["test_video_top1"]}
                      for m in ("video", "audio", "both")},
            "pretext": {"val_" + metric.split("/")[1]: _last(log, metric)},  # e.g. val_accuracy
        }
        if method == "avts":
            entry["sync_accuracy"] = _last(log, "test/sync_accuracy")
        if method == "selavi":
            heads = sorted(k for k in log[-1] if k.startswith("val/nmi_head")) if log else []
            best = max(heads, key=lambda k: _last(log, k))  # chosen on val …
            entry["nmi"] = _last(log, best.replace("val/", "test/"))  # … read on test
            entry["best_head"] = int(best.removeprefix("val/nmi_head"))
        results[method] = entry
        timings[method] = time.time() - t

    # the decoded splits (data.cache: memory) stay for the fine-tuning, whose recipe reads the same shards
    downstream(out, common, methods, results, timings, args.downstream)

    step("6/6 results")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"data: {manifest['num_samples']} videos ({manifest['hours']:.2f} h) in "
          f"{sum(len(s['shards']) for s in manifest['splits'].values())} shards, "
          f"{len(manifest['skipped'])} skipped")
    chance = 100 / max(len(manifest.get("classes") or [1]), 1)
    print(f"linear probe, synthetic test split, video-level top-1 % (chance {chance:.1f}%):")
    print(f"{'encoder':<8} {'random init':>12} " + " ".join(f"{m:>16}" for m in methods))
    for modality in ("video", "audio", "both"):
        cells = []
        for entry in (results[m] for m in methods):
            row = entry["probe"][modality]
            cells.append(f"{row['pretrained']:>7.1f} ({row['pretrained'] - row['random']:+5.1f})")
        print(f"{modality:<8} {random_metrics[modality]['test_video_top1']:>12.1f} " + " ".join(f"{c:>16}" for c in cells))
    for method in methods:
        entry = results[method]
        extras = {**entry["pretext"], **{k: entry[k] for k in ("sync_accuracy", "nmi") if k in entry}}
        print(f"{method} held-out pretext: " + ", ".join(f"{k} {v:.3f}" for k, v in extras.items()))
    print_downstream(results, methods)
    print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"written: {out / 'results.json'}")


def downstream(out: Path, common: list[str], methods: list[str], results: dict, timings: dict, steps: str) -> None:
    """Fine-tuning (first method), localization (every method and random init) and
    separation (first method) on the same shards; adds their entries to ``results``."""
    wanted = [s for s in steps.split(",") if s]
    unknown = sorted(set(wanted) - {"finetune", "localize", "separate", "events"})
    if unknown:
        raise SystemExit(f"unknown downstream step(s) {unknown}")
    first = methods[0]
    evals = RECIPES / "eval"
    if "finetune" in wanted:
        t = step(f"5/6 fine-tuning the {first} video encoder")
        run("finetune", str(evals / "synth_finetune.yaml"), *common, f"finetune.encoders={out / first / 'export'}",
            f"run_dir={out / 'finetune'}")
        metrics = json.loads((out / "finetune" / "metrics.json").read_text())
        results["finetune"] = {"video": {"pretrained": metrics["test"]["video_top1"],
                                         "linear_probe": results[first]["probe"]["video"]["pretrained"],
                                         "method": first}}
        timings["finetune"] = time.time() - t
    if "localize" in wanted:
        t = step("5/6 sound-source and event localization (random init, then each method)")
        recipe = str(evals / "synth_localization.yaml")
        options = [f"localization.cache_dir={out / 'feature_cache'}",
                   f"localization.events={'true' if 'events' in wanted else 'false'}"]
        run("localize", recipe, *common, *options, "localization.checkpoint=random", f"run_dir={out / 'localize_random'}")
        random_loc = json.loads((out / "localize_random" / "metrics.json").read_text())
        results["localization"] = {}
        for method in methods:
            run("localize", recipe, *common, *options, f"localization.checkpoint={out / method / 'checkpoints' / 'last.ckpt'}",
                f"run_dir={out / f'localize_{method}'}")
            loc = json.loads((out / f"localize_{method}" / "metrics.json").read_text())
            results["localization"][method] = {
                "ciou": loc["ciou"], "auc": loc["auc"], "mean_ciou": loc["mean_ciou"], "rule": loc["rule"],
                "random_ciou": random_loc["ciou"], "random_auc": random_loc["auc"],
                "whole_image_ciou": loc["whole_image_ciou"], "whole_image_mean_ciou": loc["whole_image_mean_ciou"],
                "median_rule": {"ciou": loc["by_rule"]["median"]["ciou"], "mean_ciou": loc["by_rule"]["median"]["mean_ciou"],
                                "random_mean_ciou": random_loc["by_rule"]["median"]["mean_ciou"]},
                "event_segment_accuracy": loc.get("events", {}).get("segment_accuracy"),
                "random_event_segment_accuracy": random_loc.get("events", {}).get("segment_accuracy"),
            }
        timings["localize"] = time.time() - t
    if "separate" in wanted:
        t = step(f"5/6 mix-and-separate with the {first} video encoder")
        with intra_op_threads(os.cpu_count() or 1):  # its clips are decoded once, then trained on in memory
            run("separate", str(evals / "synth_separation.yaml"), *common, f"separation.encoders={out / first / 'export'}",
                f"run_dir={out / 'separate'}")
        metrics = json.loads((out / "separate" / "metrics.json").read_text())
        mixtures = metrics["mixtures"]
        results["separation"] = {k: mixtures[k] for k in ("sdr_db", "sir_db", "sar_db", "sdr_improvement_db")}
        results["separation"].update({"si_sdr_db": mixtures.get("si_sdr_db"), "method": first,
                                      "two_source_clips": metrics.get("two_source_clips")})
        timings["separate"] = time.time() - t


def print_downstream(results: dict, methods: list[str]) -> None:
    if "finetune" in results:
        f = results["finetune"]["video"]
        print(f"fine-tuning ({f['method']} video encoder), video-level top-1 %: {f['pretrained']:.1f} "
              f"(linear probe {f['linear_probe']:.1f})")
    if "localization" in results:
        print("sound-source localization, test split (cIoU@0.5 / AUC; rule: top-k pixels, k = box area):")
        for method, loc in results["localization"].items():
            print(f"  {method:<9} {loc['ciou']:.3f} / {loc['auc']:.3f}   random init {loc['random_ciou']:.3f} / "
                  f"{loc['random_auc']:.3f}   whole image {loc['whole_image_ciou']:.3f} "
                  f"(mean cIoU {loc['mean_ciou']:.3f}, whole image {loc['whole_image_mean_ciou']:.3f})")
            if loc.get("event_segment_accuracy") is not None:
                print(f"  {'':<9} event segments: {loc['event_segment_accuracy']:.1f} % "
                      f"(random init {loc['random_event_segment_accuracy']:.1f} %)")
    if "separation" in results:
        s = results["separation"]
        print(f"separation of two-clip mixtures ({s['method']} video encoder): SDR {s['sdr_db']:.1f} dB "
              f"(+{s['sdr_improvement_db']:.1f} over the mixture), SIR {s['sir_db']:.1f}, SAR {s['sar_db']:.1f}")
        two = s.get("two_source_clips")
        if two and two.get("count"):
            print(f"  real two-source clips vs clean stems ({two['count']}): SDR {two['sdr_db']:.1f} dB "
                  f"(+{two['sdr_improvement_db']:.1f})")


def _metrics_log(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: did the pretraining run log?")
    return list(csv.DictReader(path.open()))


def _last(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key)]
    if not values:
        raise SystemExit(f"no {key} logged by the pretraining run")
    return values[-1]


if __name__ == "__main__":
    main()
