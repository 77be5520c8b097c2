"""`make demo`: synthetic videos → shards → pretraining (AVC; `--methods all` adds the other
nine methods, each with the same budget) → linear probes of random-init and
pretrained encoders → exported checkpoints → downstream evaluation of the first method
(fine-tuning, sound-source and event localization against random init, mix-and-separate)
and video↔audio retrieval of every method → results table and results.json.

Every step is an `avssl` verb; a step whose output already exists is not redone
(delete the demo folder to start over). After the shards, the steps form a small graph
(:func:`run_steps`): with several methods they run two at a time on 2 cores (`--jobs`),
each in its own process with its output in ``<out>/logs/<step>.log``.

``--seed N`` (N ≠ 0) runs the steps after the shards with the recipes' ``seed=N``, in
``<out>/seedN``, on ``<out>``'s synthetic set and shards: the data stays fixed, the training
draws vary (scripts/demo_seeds.py aggregates several seeds' results.json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from avssl.cli import main as avssl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# results.json key → CPU recipe, and the held-out pretext metric reported for it.
METHODS = {
    "avc": ("avc_small.yaml", "val/accuracy"),
    "avts": ("avts_small.yaml", "val/sync_accuracy"),
    "avid_cma": ("avid_cma_small.yaml", "val/retrieval_top1"),
    "selavi": ("selavi_small.yaml", "val/nmi_best_head"),
    "xdc": ("xdc_small.yaml", "val/nmi_video_head"),
    "avenet": ("avenet_small.yaml", "val/accuracy"),
    "lvs": ("lvs_small.yaml", "val/accuracy"),
    "vatt": ("vatt_small.yaml", "val/retrieval_top1"),
    "cav_mae": ("cav_mae_small.yaml", "val/reconstruction_ratio"),
    "robust_xid": ("robust_xid_small.yaml", "val/retrieval_top1"),
}
# Methods whose encoders are not the CNN methods': their gains are read against a random-init
# probe of their own architecture (recipes/eval/synth_probe_<method>.yaml), not the CNN's.
OWN_RANDOM_PROBE = {"vatt", "cav_mae"}


def random_probe_folder(method: str) -> str:
    """The run folder of the random-init probe ``method``'s gains are read against."""
    return f"probe_random_{method}" if method in OWN_RANDOM_PROBE else "probe_random"


def seed_dir(out: Path, seed: int) -> Path:
    """Where seed ``seed``'s steps write (their run folders, logs, results.json): ``out`` itself
    for seed 0, so that the default demo keeps its paths, ``out/seed<N>`` otherwise."""
    return out if seed == 0 else out / f"seed{seed}"


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


# -- the step graph ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step after the shards: ``run(threads)`` (``threads``: the cores it may use; the
    separation sets that many intra-op threads, `avssl pretrain` sets its own beside its
    loader workers), started once every step named in ``after`` has finished."""

    name: str
    run: Callable[[int], None]
    after: tuple[str, ...] = ()


def run_steps(steps: list[Step], jobs: int, log_dir: Path, cores: int) -> dict[str, float]:
    """Run ``steps`` ``jobs`` at a time, each once the steps it comes ``after`` have finished,
    the first ready one in list order whenever a slot frees; returns each step's wall seconds.

    ``jobs == 1``: one after another in this process, output to the terminal, each given
    ``cores``. ``jobs > 1``: each step in a forked process (it shares what this process has
    decoded into memory) given ``cores // jobs``, torch's intra-op threads set to that, its output in
    ``log_dir/<name>.log``; the first failure stops the others and shows the end of its log.
    Two runs side by side finish sooner than one after the other (docs/benchmarks.md).

    Hand-written because no well-kept mechanism fits: ``concurrent.futures`` reuses worker
    processes (no fresh fork after the decode, so no copy-on-write sharing of the decoded
    splits), cannot stop a running task when another fails and has no per-task log
    redirection; ``make -j`` would decode the splits once per step process."""
    names = [s.name for s in steps]
    missing = sorted({d for s in steps for d in s.after} - set(names))
    if missing or len(set(names)) != len(names):
        raise ValueError(f"steps: unknown dependencies {missing} or repeated names in {names}")
    timings: dict[str, float] = {}
    done: set[str] = set()
    pending = list(steps)

    def next_ready() -> Step | None:
        ready = next((s for s in pending if done.issuperset(s.after)), None)
        if ready is not None:
            pending.remove(ready)
        return ready

    if jobs <= 1:
        while pending:
            ready = next_ready()
            if ready is None:
                raise ValueError(f"steps {[s.name for s in pending]} wait on each other")
            started = step(ready.name)
            ready.run(cores)
            timings[ready.name] = time.time() - started
            done.add(ready.name)
        return timings

    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, cores // jobs)
    context = mp.get_context("fork")
    running: dict[int, tuple[Step, mp.process.BaseProcess, float]] = {}
    begin = time.time()

    def say(message: str) -> None:
        minutes, seconds = divmod(int(time.time() - begin), 60)
        print(f"[{minutes:3d}:{seconds:02d}] {message}", flush=True)

    try:
        while pending or running:
            while len(running) < jobs and (ready := next_ready()) is not None:
                log = log_dir / f"{ready.name}.log"
                sys.stdout.flush(), sys.stderr.flush()  # nothing buffered is written twice by the child
                process = context.Process(target=_run_logged, args=(ready, log, threads), name=f"demo-{ready.name}")
                process.start()
                running[process.sentinel] = (ready, process, time.time())
                say(f"{ready.name}: started, output in {log}")
            if not running:
                raise ValueError(f"steps {[s.name for s in pending]} wait on each other")
            for sentinel in mp.connection.wait(list(running)):
                finished, process, started = running.pop(sentinel)
                process.join()
                timings[finished.name] = time.time() - started
                if process.exitcode != 0:
                    log = log_dir / f"{finished.name}.log"
                    raise SystemExit(f"demo step {finished.name} failed (exit code {process.exitcode}); "
                                     f"the end of {log}:\n{_tail(log)}")
                done.add(finished.name)
                say(f"{finished.name}: finished in {timings[finished.name]:.0f} s")
    finally:
        for _, process, _ in running.values():  # a failure or Ctrl-C: stop the other steps too
            process.terminate()
            process.join()
    return timings


def _run_logged(step_: Step, log: Path, threads: int) -> None:
    """A forked step: stdout and stderr (Lightning, tqdm, tracebacks) into ``log``."""
    import torch

    torch.set_num_threads(threads)
    handle = open(log, "w", buffering=1)  # one open file behind fds 1, 2 and Python's streams: one offset
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle
    step_.run(threads)
    handle.flush()


def _tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, progress-bar redraws split into lines."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def decode_splits(shards: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Decode the splits the CPU recipes read (``data.cache: memory``) into this process
    before the steps fork, so that they share one copy (copy-on-write) instead of decoding
    one each."""
    from avssl.data.cache import decoded_split
    from avssl.data.datamodule import ShardList

    for split in splits:
        decoded_split(ShardList.from_manifest(str(shards), split).files, description=split)


# -- the demo ---------------------------------------------------------------------------------
def main() -> None:
    import torch

    # Two cores shared by the training process and the loader workers: one intra-op
    # thread in the training process is fastest (OpenMP spinning starves the workers).
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--num-videos", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=None,
                        help="pretraining epochs of every method (default: each recipe's own trainer.max_epochs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="avc", help=f"comma-separated from {sorted(METHODS)}, or 'all'")
    parser.add_argument("--downstream", default="finetune,localize,separate",
                        help="downstream steps after pretraining (comma-separated; '' for none); "
                             "'events' adds AVE-style event localization to the localize step (~2 min more); "
                             "'retrieve' adds video↔audio retrieval of every method (~30 s a method)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the recipes' seed for every pretraining and evaluation step; N ≠ 0 writes to "
                             "<out>/seedN and reuses <out>'s synthetic set and shards (0: the recorded demo)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="steps run side by side after the shards (default: one per pretraining method, "
                             "at most one per core; 1: one after another, output to the terminal)")
    args = parser.parse_args()
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, got {args.seed}")
    out: Path = args.out
    synth, shards = out / "synth", out / "shards"  # shared by every seed
    root = seed_dir(out, args.seed)
    timings = {}
    begin = time.time()

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

    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {sorted(METHODS)} or 'all'")
    wanted = [s for s in args.downstream.split(",") if s]
    unknown = sorted(set(wanted) - {"finetune", "localize", "separate", "events", "retrieve"})
    if unknown:
        raise SystemExit(f"unknown downstream step(s) {unknown}")
    cores = os.cpu_count() or 1
    jobs = args.jobs or min(len(methods), cores)
    common = [f"data.shards={shards}", f"data.num_workers={args.workers}"]
    steps = demo_steps(root, common, methods, wanted, args.epochs, args.seed)
    title = "3/5 probes, pretraining and downstream steps"
    if jobs > 1:
        t = step(f"{title}, {jobs} at a time (each in a process of its own)")
        decode_splits(shards)  # before the steps fork: one copy for all of them
        timings["decode"] = time.time() - t
    else:
        print(f"\n{title}, one after another", flush=True)
    timings.update(run_steps(steps, jobs, root / "logs", cores))

    step("4/5 results")
    results = collect_results(root, methods, wanted)
    root.mkdir(parents=True, exist_ok=True)
    results, kept = merge_results(read_previous_results(root / "results.json"), results)
    if kept:
        print(f"kept from the earlier {root / 'results.json'} (steps not run this time; their run folders "
              f"are in {root}): {', '.join(kept)}", flush=True)
    write_json(root / "results.json", results)
    step("5/5 table")
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
        cnn = [m for m in methods if m not in OWN_RANDOM_PROBE]  # the CNN methods share one random-init probe
        random_top1 = f"{results[cnn[0]]['probe'][modality]['random']:.1f}" if cnn else "-"
        print(f"{modality:<8} {random_top1:>12} " + " ".join(f"{c:>16}" for c in cells))
    for method in (m for m in methods if m in OWN_RANDOM_PROBE):
        randoms = {modality: row["random"] for modality, row in results[method]["probe"].items()}
        print(f"{method}'s gains are over its own architecture at random init: "
              + ", ".join(f"{modality} {top1:.1f}" for modality, top1 in randoms.items()))
    for method in methods:
        entry = results[method]
        extras = {**entry["pretext"], **{k: entry[k] for k in ("sync_accuracy", "nmi") if k in entry}}
        print(f"{method} held-out pretext: " + ", ".join(f"{k} {v:.3f}" for k, v in extras.items()))
    print_downstream(results, methods)
    overlap = f" ({jobs} steps at a time after the shards)" if jobs > 1 else ""
    print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {time.time() - begin:.0f}{overlap}")
    print(f"written: {root / 'results.json'}")


def demo_steps(out: Path, common: list[str], methods: list[str], downstream: list[str], epochs: int | None,
               seed: int = 0) -> list[Step]:
    """The steps after the shards, writing under ``out``: each method's pretraining and probe,
    the downstream steps of the first method, the random-init probes (the CNN's, and each
    transformer method's own), localization and
    retrieval (every method and random init). ``seed`` ≠ 0 adds ``seed=<seed>`` to the pretraining, probes,
    fine-tuning and localization (initialisation, batch order, augmentations); the separation
    keeps its recipe's ``separation.seed``, which also draws its test mixtures, so that every
    seed is scored on the same mixtures (it varies through the encoders it reads). Seed 0
    adds nothing: the command lines of the recorded demo. ``epochs`` sets every method's
    pretraining epochs; None keeps each recipe's ``trainer.max_epochs`` (its budget on this set).

    The separation comes right after the first method, before the other methods: at one
    intra-op thread it cannot use a core the other slot leaves free, so it should not be the
    step that runs alone at the end (a pretraining run alone uses both cores: its loader
    workers take the second)."""
    probe_recipe = str(RECIPES / "eval" / "synth_probe.yaml")
    cache = f"probe.cache_dir={out / 'feature_cache'}"
    evals = RECIPES / "eval"
    first = methods[0]
    seeded = [f"seed={seed}"] if seed else []
    budget = [] if epochs is None else [f"trainer.max_epochs={epochs}"]  # None: the recipe's own

    def pretrain_and_probe(method: str) -> Callable[[int], None]:
        def go(threads: int) -> None:
            recipe, _ = METHODS[method]
            if not (out / method / "export" / "model.json").exists():
                run("pretrain", str(RECIPES / "synth" / recipe), *common, *seeded, f"run_dir={out / method}",
                    *budget)
            run("probe", probe_recipe, *common, *seeded, cache, f"probe.encoders={out / method / 'export'}",
                f"run_dir={out / f'probe_{method}'}")
        return go

    def probe_random(folder: str, recipe: str) -> Callable[[int], None]:
        def go(threads: int) -> None:
            run("probe", recipe, *common, *seeded, cache, "probe.encoders=random", f"run_dir={out / folder}")
        return go

    def finetune(threads: int) -> None:
        run("finetune", str(evals / "synth_finetune.yaml"), *common, *seeded,
            f"finetune.encoders={out / first / 'export'}", f"run_dir={out / 'finetune'}")

    def separate(threads: int) -> None:
        with intra_op_threads(threads):  # its clips are decoded once, then trained on in memory: every core it has
            run("separate", str(evals / "synth_separation.yaml"), *common,
                f"separation.encoders={out / first / 'export'}", f"run_dir={out / 'separate'}")

    def random_and_every_method(verb: str, section: str, recipe: str, options: list[str]) -> None:
        """``verb`` on the random-init task, then on each method's last checkpoint."""
        for name, checkpoint in [("random", "random"),
                                 *((m, out / m / "checkpoints" / "last.ckpt") for m in methods)]:
            run(verb, recipe, *common, *seeded, *options, f"{section}.checkpoint={checkpoint}",
                f"run_dir={out / f'{verb}_{name}'}")

    def localize(threads: int) -> None:
        random_and_every_method("localize", "localization", str(evals / "synth_localization.yaml"),
                                [f"localization.cache_dir={out / 'feature_cache'}",
                                 f"localization.events={'true' if 'events' in downstream else 'false'}"])

    def retrieve(threads: int) -> None:
        random_and_every_method("retrieve", "retrieval", str(evals / "synth_retrieval.yaml"),
                                [f"retrieval.cache_dir={out / 'feature_cache'}"])

    steps = [Step(first, pretrain_and_probe(first))]
    if "separate" in downstream:
        steps.append(Step("separate", separate, after=(first,)))
    steps += [Step(method, pretrain_and_probe(method)) for method in methods[1:]]
    if "finetune" in downstream:
        steps.append(Step("finetune", finetune, after=(first,)))
    steps.append(Step("probe_random", probe_random("probe_random", probe_recipe)))
    steps += [Step(random_probe_folder(m), probe_random(random_probe_folder(m), str(evals / f"synth_probe_{m}.yaml")))
              for m in methods if m in OWN_RANDOM_PROBE]
    if "localize" in downstream:
        steps.append(Step("localize", localize, after=tuple(methods)))
    if "retrieve" in downstream:  # last: a step run in this process leaves the others' random draws as they were
        steps.append(Step("retrieve", retrieve, after=tuple(methods)))
    return steps


def write_json(path: Path, data: dict) -> None:
    """Temp file then rename: an interrupted write leaves the previous file."""
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with handle:
        json.dump(data, handle, indent=2)
    os.replace(handle.name, path)


# results.json entries that hold one sub-entry per method (or baseline): merged key by key
PER_METHOD_SECTIONS = ("localization", "retrieval")


def read_previous_results(path: Path) -> dict:
    """The results.json an earlier demo left in this folder ({} if none or unreadable: then it is
    replaced, as before)."""
    try:
        previous = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        print(f"warning: {path} is not readable JSON ({error}); it is replaced", flush=True)
        return {}
    return previous if isinstance(previous, dict) else {}


def merge_results(previous: dict, current: dict) -> tuple[dict, list[str]]:
    """``current`` with every entry of ``previous`` it lacks, so that `make demo METHODS=a` then
    `METHODS=b` in one folder leave both methods' figures; the entries of the steps run now win.
    Returns the merged results and the keys kept from ``previous`` (``section.method`` inside
    the per-method sections)."""
    merged, kept = dict(current), []
    for key, value in previous.items():
        if key not in merged:
            merged[key] = value
            kept.append(key)
        elif key in PER_METHOD_SECTIONS and isinstance(value, dict) and isinstance(merged[key], dict):
            for inner, entry in value.items():
                if inner not in merged[key]:
                    merged[key] = {**merged[key], inner: entry}
                    kept.append(f"{key}.{inner}")
    return merged, kept


def collect_results(out: Path, methods: list[str], downstream: list[str]) -> dict:
    """results.json from the steps' metrics files and logs."""
    results: dict = {}
    for method in methods:
        _, metric = METHODS[method]
        random_metrics = json.loads((out / random_probe_folder(method) / "metrics.json").read_text())
        metrics = json.loads((out / f"probe_{method}" / "metrics.json").read_text())
        log = _metrics_log(out / method)
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
        if method == "xdc":  # the final clustering of the training set's video features against its categories
            entry["nmi"] = _last(log, "train/xdc_nmi")
        if method == "cav_mae":  # masked-patch error on val beside predicting each patch's mean
            entry["reconstruction"] = {m: {"error": _last(log, f"val/reconstruction_{m}"),
                                           "patch_mean": _last(log, f"val/patch_mean_{m}")}
                                       for m in ("video", "audio")}
        results[method] = entry
    first = methods[0]
    if "finetune" in downstream:
        metrics = json.loads((out / "finetune" / "metrics.json").read_text())
        results["finetune"] = {"video": {"pretrained": metrics["test"]["video_top1"],
                                         "linear_probe": results[first]["probe"]["video"]["pretrained"],
                                         "method": first}}
    if "localize" in downstream:
        random_loc = json.loads((out / "localize_random" / "metrics.json").read_text())
        results["localization"] = {}
        for method in methods:
            loc = json.loads((out / f"localize_{method}" / "metrics.json").read_text())
            results["localization"][method] = {
                "ciou": loc["ciou"], "auc": loc["auc"], "mean_ciou": loc["mean_ciou"], "rule": loc["rule"],
                "random_ciou": random_loc["ciou"], "random_auc": random_loc["auc"],
                "whole_image_ciou": loc["whole_image_ciou"], "whole_image_mean_ciou": loc["whole_image_mean_ciou"],
                "median_rule": {"ciou": loc["by_rule"]["median"]["ciou"],
                                "mean_ciou": loc["by_rule"]["median"]["mean_ciou"],
                                "random_mean_ciou": random_loc["by_rule"]["median"]["mean_ciou"]},
                "event_segment_accuracy": loc.get("events", {}).get("segment_accuracy"),
                "random_event_segment_accuracy": random_loc.get("events", {}).get("segment_accuracy"),
            }
    if "retrieve" in downstream:
        random_ret = json.loads((out / "retrieve_random" / "metrics.json").read_text())
        results["retrieval"] = {}
        for method in ["random", *methods]:
            ret = random_ret if method == "random" else json.loads((out / f"retrieve_{method}" / "metrics.json")
                                                                     .read_text())
            results["retrieval"][method] = {direction: ret[direction] for direction in ("video_to_audio",
                                                                                        "audio_to_video")}
            results["retrieval"][method]["num_items"] = ret["num_items"]
    if "separate" in downstream:
        metrics = json.loads((out / "separate" / "metrics.json").read_text())
        mixtures = metrics["mixtures"]
        results["separation"] = {k: mixtures[k] for k in ("sdr_db", "sir_db", "sar_db", "sdr_improvement_db")}
        results["separation"].update({"si_sdr_db": mixtures.get("si_sdr_db"), "method": first,
                                      "two_source_clips": metrics.get("two_source_clips")})
    return results


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
    if "retrieval" in results:
        items = next(iter(results["retrieval"].values()))["num_items"]
        print(f"video↔audio retrieval among the {items} test clips (R@1 / R@5 / R@10 %, median rank; "
              f"chance R@1 {100 / items:.1f} %):")
        print(f"  {'':<9} {'video → audio':>28} {'audio → video':>28}")
        for method, ret in results["retrieval"].items():
            cells = [f"{r['r@1']:5.1f} / {r['r@5']:5.1f} / {r['r@10']:5.1f}, {r['median_rank']:>4g}"
                     for r in (ret["video_to_audio"], ret["audio_to_video"])]
            print(f"  {method:<9} {cells[0]:>28} {cells[1]:>28}")
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
