"""scripts/demo_seeds.py: mean ± sample std, min and per-seed targets over hand-made results.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

demo_seeds = load_script("demo_seeds")


def _results(video: float, audio: float, sync: float, nmi: float, random_video: float = 20.0) -> dict:
    """A `make demo METHODS=avts,selavi` results.json with the given AVTS/SeLaVi figures."""
    def probe(v: float, a: float) -> dict:
        return {"video": {"random": random_video, "pretrained": v}, "audio": {"random": 40.0, "pretrained": a},
                "both": {"random": 45.0, "pretrained": 90.0}}
    return {"avts": {"probe": probe(video, audio), "pretext": {"val_sync_accuracy": 0.9}, "sync_accuracy": sync},
            "selavi": {"probe": probe(70.0, 90.0), "pretext": {"val_nmi_best_head": 0.75}, "nmi": nmi, "best_head": 1},
            "finetune": {"video": {"pretrained": 80.0, "linear_probe": video, "method": "avts"}},
            "localization": {m: {"ciou": c, "random_ciou": 0.25} for m, c in (("avts", 0.5), ("selavi", 0.75))},
            "separation": {"sdr_improvement_db": 6.0}}


def _write(out: Path, seed: int, results: dict) -> None:
    folder = out if seed == 0 else out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))


def test_figures_of_one_seed() -> None:
    rows = demo_seeds.figures(_results(64.0, 72.0, 0.93, 0.71))
    assert rows["avts"] == {"video_top1": 64.0, "video_gain": 44.0, "audio_top1": 72.0, "audio_gain": 32.0,
                            "both_top1": 90.0, "both_gain": 45.0, "val_sync_accuracy": 0.9, "sync_accuracy": 0.93,
                            "ciou": 0.5, "ciou_gap": 0.25}
    assert rows["selavi"]["nmi"] == 0.71 and rows["selavi"]["ciou_gap"] == 0.5
    assert rows["random"] == {"video_top1": 20.0, "audio_top1": 40.0, "both_top1": 45.0}
    assert rows["finetune"] == {"video_top1": 80.0, "over_probe": 16.0}
    assert rows["separation"] == {"sdr_improvement_db": 6.0}


def test_mean_sample_std_min_and_targets_over_three_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # AVTS video gain 44, 42, 40 (mean 42, sample std 2); sync 0.93, 0.88, 0.95: the mean 0.92 meets 0.90,
    # seed 1 does not
    for seed, (video, sync) in enumerate([(64.0, 0.93), (62.0, 0.88), (60.0, 0.95)]):
        _write(tmp_path, seed, _results(video, 72.0 + 2 * seed, sync, 0.71))
    assert demo_seeds.main([str(tmp_path), "--seeds", "0,1,2"]) == 0
    summary = json.loads((tmp_path / "results_seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["targets_hold"] is False
    video = summary["rows"]["avts"]["video_gain"]
    assert video["values"] == [44.0, 42.0, 40.0] and video["mean"] == 42.0 and video["std"] == 2.0
    assert (video["min"], video["max"], video["target"], video["holds"]) == (40.0, 44.0, 20.0, True)
    audio = summary["rows"]["avts"]["audio_gain"]  # 32, 34, 36
    assert audio["mean"] == 34.0 and audio["std"] == 2.0 and audio["target"] == 10.0
    sync = summary["rows"]["avts"]["sync_accuracy"]
    assert sync["mean"] == pytest.approx(0.92, abs=1e-12)
    assert sync["std"] == pytest.approx(((0.01 ** 2 + 0.04 ** 2 + 0.03 ** 2) / 2) ** 0.5, abs=1e-12)  # 0.0360555
    assert (sync["min"], sync["target"], sync["holds"]) == (0.88, 0.9, False)
    nmi = summary["rows"]["selavi"]["nmi"]
    assert (nmi["mean"], nmi["std"], nmi["target"], nmi["holds"]) == (0.71, 0.0, 0.7, True)
    assert summary["rows"]["random"]["video_top1"]["target"] is None  # no bar for random init
    assert summary["rows"]["finetune"]["over_probe"]["values"] == [16.0, 18.0, 20.0]
    assert summary["targets_not_found"] == []
    table = capsys.readouterr().out.splitlines()
    assert ("avts        sync_accuracy           0.920 ± 0.036      0.880     0.930   0.880   0.950  "
            "≥ 0.9: NOT MET") in table
    assert ("avts        video_gain             42.000 ± 2.000     40.000    44.000  42.000  40.000  "
            "≥ 20: holds") in table
    assert "random      video_top1             20.000 ± 0.000     20.000    20.000  20.000  20.000" in table
    assert "some target fails on some seed" in table


def test_check_fails_on_a_target_missed_by_one_seed_and_targets_can_be_raised(tmp_path: Path) -> None:
    for seed in (0, 4):
        _write(tmp_path, seed, _results(64.0 - seed, 72.0, 0.93, 0.71))  # video gain 44 and 40
    assert demo_seeds.main([str(tmp_path), "--seeds", "0,4", "--check"]) == 0
    assert json.loads((tmp_path / "results_seeds.json").read_text())["targets_hold"] is True
    assert demo_seeds.main([str(tmp_path), "--seeds", "0,4", "--check", "--target", "video_gain=42",
                            "--target", "selavi.audio_gain=51", "--target", "xdc.nmi=0.5"]) == 1
    summary = json.loads((tmp_path / "results_seeds.json").read_text())
    assert summary["rows"]["avts"]["video_gain"]["holds"] is False  # 40 < 42 on seed 4
    assert summary["rows"]["selavi"]["video_gain"]["holds"] is True  # 50 ≥ 42 on both
    assert summary["rows"]["selavi"]["audio_gain"] == {"values": [50.0, 50.0], "mean": 50.0, "std": 0.0, "min": 50.0,
                                                       "max": 50.0, "target": 51.0, "holds": False}
    assert summary["rows"]["avts"]["audio_gain"]["target"] == 10.0  # only SeLaVi's was raised
    assert summary["targets_not_found"] == ["xdc.nmi"]


def test_one_seed_has_no_spread(tmp_path: Path) -> None:
    _write(tmp_path, 0, _results(64.0, 72.0, 0.93, 0.71))
    summary = demo_seeds.aggregate(demo_seeds.load_seeds(tmp_path, [0]))
    assert summary["rows"]["avts"]["video_gain"]["std"] is None and summary["targets_hold"] is True
    table = demo_seeds.format_table(summary).splitlines()
    assert "avts        video_gain             44.000 ± —         44.000    44.000  ≥ 20: holds" in table


def test_user_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path, 0, _results(64.0, 72.0, 0.93, 0.71))
    assert demo_seeds.main([str(tmp_path), "--seeds", "0,1"]) == 1
    err = capsys.readouterr().err
    assert err == (f"demo_seeds: {tmp_path / 'seed1' / 'results.json'} not found: run "
                   f"`python scripts/demo.py --out {tmp_path} --seed 1` first\n")
    other = _results(64.0, 72.0, 0.93, 0.71)
    del other["selavi"]
    _write(tmp_path, 1, other)
    assert demo_seeds.main([str(tmp_path), "--seeds", "0,1"]) == 1
    assert capsys.readouterr().err.startswith("demo_seeds: seed 1's results.json has other figures than seed 0's")
    assert not (tmp_path / "results_seeds.json").exists()
    for argv, message in ((["--seeds", "0,0"], "--seeds must be distinct and at least 0, got '0,0'"),
                          (["--seeds", "0,x"], "--seeds must be comma-separated integers, got '0,x'"),
                          (["--target", "video_gain"], "--target 'video_gain': expected [METHOD.]FIGURE=MIN")):
        with pytest.raises(SystemExit) as exit_info:
            demo_seeds.main([str(tmp_path), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
