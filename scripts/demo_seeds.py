"""Mean ± standard deviation of the demo's figures over several seeds (`make demo-seeds`).

    python scripts/demo.py --out runs/demo --methods all --seed 1    # and --seed 0, --seed 2
    python scripts/demo_seeds.py runs/demo --seeds 0,1,2 [--target video_gain=40 --target avts.audio_gain=25]

Reads each seed's results.json (``<out>/results.json`` for seed 0, ``<out>/seed<N>/results.json``
otherwise: scripts/demo.py's layout), writes ``<out>/results_seeds.json`` and prints, per
method and figure, the mean ± sample standard deviation (n − 1), the minimum and maximum, and
whether the figure's target holds for every seed. The steps are deterministic on one machine,
so only the seed spread says how far a figure can move; a target met on average but not on
every seed is not met.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/demo.py, the seed folders' layout
from demo import seed_dir, write_json  # noqa: E402

ANY_METHOD = "*"
# (method or ANY_METHOD, figure) → the smallest value that meets the target: issue 4's bars as
# docs/results.md records them (probe gain over random init, percentage points; AVTS's
# synchronisation accuracy and SeLaVi's best-head NMI on the test split).
TARGETS: dict[tuple[str, str], float] = {
    (ANY_METHOD, "video_gain"): 20.0,
    (ANY_METHOD, "audio_gain"): 10.0,
    ("avts", "sync_accuracy"): 0.90,
    ("selavi", "nmi"): 0.70,
}


def figures(results: dict) -> dict[str, dict[str, float]]:
    """One seed's results.json as row → figure → value. Rows: each pretraining method (probe
    top-1 and gain over random init per modality, its held-out pretext figures, localization
    cIoU@0.5 and its gap over random init), ``random`` (the random-init probe), ``finetune``
    and ``separation`` when the demo ran them."""
    rows: dict[str, dict[str, float]] = {}
    methods = [name for name, entry in results.items() if isinstance(entry, dict) and "probe" in entry]
    for method in methods:
        entry = results[method]
        row: dict[str, float] = {}
        for modality, probe in entry["probe"].items():
            row[f"{modality}_top1"] = probe["pretrained"]
            row[f"{modality}_gain"] = probe["pretrained"] - probe["random"]
        row.update(entry["pretext"])
        row.update({key: entry[key] for key in ("sync_accuracy", "nmi") if key in entry})
        localization = results.get("localization", {}).get(method)
        if localization:
            row["ciou"] = localization["ciou"]
            row["ciou_gap"] = localization["ciou"] - localization["random_ciou"]
        rows[method] = row
    if methods:  # the same random-init probe in every method's entry
        rows["random"] = {f"{m}_top1": p["random"] for m, p in results[methods[0]]["probe"].items()}
    if "finetune" in results:
        video = results["finetune"]["video"]
        rows["finetune"] = {"video_top1": video["pretrained"],
                            "over_probe": video["pretrained"] - video["linear_probe"]}
    if "separation" in results:
        rows["separation"] = {"sdr_improvement_db": results["separation"]["sdr_improvement_db"]}
    return rows


def target_for(targets: dict[tuple[str, str], float], row: str, figure: str) -> float | None:
    """The bar of ``row``'s ``figure``: its own, else the one for every method (not for the
    ``random``, ``finetune`` and ``separation`` rows), else None."""
    if (row, figure) in targets:
        return targets[row, figure]
    if row in ("random", "finetune", "separation"):
        return None
    return targets.get((ANY_METHOD, figure))


def aggregate(per_seed: dict[int, dict], targets: dict[tuple[str, str], float] | None = None) -> dict:
    """Per row and figure over the seeds' results.json (``per_seed``: seed → results): values in
    seed order, mean, sample std (None for one seed), min, max, target and whether every seed
    meets it. Every seed must have the same rows and figures (the same demo command)."""
    targets = TARGETS if targets is None else targets
    tables = {seed: figures(results) for seed, results in per_seed.items()}
    first_seed, first = next(iter(tables.items()))
    for seed, table in tables.items():
        shape, expected = {r: sorted(f) for r, f in table.items()}, {r: sorted(f) for r, f in first.items()}
        if shape != expected:
            raise ValueError(f"seed {seed}'s results.json has other figures than seed {first_seed}'s: "
                             f"{shape} vs {expected} (run every seed with the same --methods and --downstream)")
    rows: dict[str, dict[str, dict]] = {}
    all_hold = True
    for row, names in first.items():
        rows[row] = {}
        for figure in names:
            values = [tables[seed][row][figure] for seed in per_seed]
            bar = target_for(targets, row, figure)
            holds = None if bar is None else all(v >= bar for v in values)
            all_hold = all_hold and holds is not False
            rows[row][figure] = {"values": values, "mean": statistics.fmean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else None,
                                 "min": min(values), "max": max(values), "target": bar, "holds": holds}
    unmatched = sorted(f"{r}.{f}" for r, f in targets if (r == ANY_METHOD and not any(f in first[m] for m in first))
                       or (r != ANY_METHOD and f not in first.get(r, {})))
    return {"seeds": list(per_seed), "rows": rows, "targets_hold": all_hold, "targets_not_found": unmatched}


def parse_targets(texts: list[str]) -> dict[tuple[str, str], float]:
    """TARGETS updated by ``[METHOD.]FIGURE=MIN`` texts (no method: every method)."""
    targets = dict(TARGETS)
    for text in texts:
        name, sep, value = text.partition("=")
        method, dot, figure = name.rpartition(".")
        try:
            bar = float(value)
        except ValueError:
            bar = math.nan
        if not sep or not figure or math.isnan(bar):
            raise ValueError(f"--target {text!r}: expected [METHOD.]FIGURE=MIN, e.g. video_gain=40 or avts.nmi=0.7")
        targets[method if dot else ANY_METHOD, figure] = bar
    return targets


def load_seeds(out: Path, seeds: list[int]) -> dict[int, dict]:
    per_seed = {}
    for seed in seeds:
        path = seed_dir(out, seed) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `python scripts/demo.py --out {out} --seed {seed}` first")
        per_seed[seed] = json.loads(path.read_text())
    return per_seed


def format_table(summary: dict) -> str:
    """One line per row and figure: mean ± sample std, min, every seed's value, the target."""
    seeds = summary["seeds"]
    width = 8 * len(seeds)
    lines = [f"{'row':<11} {'figure':<20} {'mean':>8} {'± std':<9} {'min':>8}  "
             f"{'seeds ' + ','.join(map(str, seeds)):<{width}}  target (every seed)"]
    for row, entries in summary["rows"].items():
        for figure, s in entries.items():
            spread = "± —" if s["std"] is None else f"± {s['std']:.3f}"
            values = "".join(f"{v:>8.3f}" for v in s["values"])
            verdict = "" if s["target"] is None else f"≥ {s['target']:g}: {'holds' if s['holds'] else 'NOT MET'}"
            lines.append(f"{row:<11} {figure:<20} {s['mean']:>8.3f} {spread:<9} {s['min']:>8.3f}  {values:<{width}}  "
                         f"{verdict}".rstrip())
    lines.append("every target holds for every seed" if summary["targets_hold"] else "some target fails on some seed")
    if summary["targets_not_found"]:
        lines.append(f"targets with no figure in these results: {', '.join(summary['targets_not_found'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo folder (scripts/demo.py --out)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--target", action="append", default=[], metavar="[METHOD.]FIGURE=MIN",
                        help="add or change a target (no METHOD: every method), e.g. video_gain=40; repeatable")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails on some seed")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        parser.error(f"--seeds must be distinct and at least 0, got {args.seeds!r}")
    try:
        targets = parse_targets(args.target)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = aggregate(load_seeds(args.out, seeds), targets)
    except (FileNotFoundError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        print(f"demo_seeds: {error}", file=sys.stderr)
        return 1
    write_json(args.out / "results_seeds.json", summary)
    print(format_table(summary))
    print(f"written: {args.out / 'results_seeds.json'}")
    return 1 if args.check and not summary["targets_hold"] else 0


if __name__ == "__main__":
    sys.exit(main())
