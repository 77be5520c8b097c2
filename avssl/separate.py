"""`avssl separate`: pick the video encoder a recipe names, run mix-and-separate, write
metrics.json and separation.png (avssl/evaluation/separation.py)."""
from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig

from avssl.config import RecipeError, start_evaluation
from avssl.evaluation.separation import SeparationConfig, run_separation
from avssl.probe import load_encoders

METRIC_ROWS = ("sdr_db", "sir_db", "sar_db", "si_sdr_db", "sdr_improvement_db", "sdr_mixture_db")


def format_table(results: dict[str, Any]) -> str:
    rows = [f"{'scored set':<17} " + " ".join(f"{k.removesuffix('_db'):>15}" for k in METRIC_ROWS) + f" {'count':>6}"]
    for name in ("mixtures", "two_source_clips"):
        if name not in results:
            continue
        r = results[name]
        cells = " ".join(f"{r[k]:>15.2f}" if r[k] is not None else f"{'-':>15}" for k in METRIC_ROWS)
        rows.append(f"{name:<17} {cells} {r['count']:>6}")
    return "\n".join(rows)


def separation_from_recipe(config: DictConfig) -> dict[str, Any]:
    cfg, run_dir = start_evaluation(config, "separation", SeparationConfig)
    try:
        encoders, data, _ = load_encoders(config, cfg.encoders, run_dir)
    except FileNotFoundError as error:
        raise RecipeError(f"separation.encoders={cfg.encoders}: {error}") from None
    if encoders.get("video") is None:
        raise RecipeError(f"separation.encoders={cfg.encoders}: these encoders have no video encoder")
    results = run_separation(encoders["video"], data, cfg, run_dir)
    results["encoders"] = cfg.encoders
    results["splits"] = {"train": cfg.train_split, "test": cfg.test_split}
    path = run_dir / "metrics.json"
    path.write_text(json.dumps(results, indent=2))
    held_out = "" if cfg.test_split != cfg.train_split else ", the split it was trained on: not held out"
    print(f"separation with video encoder {cfg.encoders} (split {cfg.test_split}{held_out}; dB, means over sources "
          f"then mixtures):\n"
          f"{format_table(results)}\n{results['seconds']['total']:.0f} s; "
          f"written: {path}, {run_dir / 'separation.png'}")
    return results
