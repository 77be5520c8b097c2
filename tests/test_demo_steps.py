"""scripts/demo.py's step graph: at most `jobs` steps at once, each after its dependencies,
forked steps sharing the parent's memory, logs per step, a failure stopping the rest."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import load_script

demo = load_script("demo")
SHARED = {"value": None}  # set in the parent before the steps fork


def _recording(record: Path, name: str, seconds: float = 0.3):
    def go(threads: int) -> None:
        start = time.time()
        print(f"{name} says hello, parent value {SHARED['value']}")
        time.sleep(seconds)
        with open(record, "a") as f:
            f.write(json.dumps({"name": name, "start": start, "end": time.time(), "threads": threads,
                                "pid": os.getpid(), "shared": SHARED["value"]}) + "\n")
    return go


def _records(record: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, record.read_text().splitlines())}


def test_steps_run_two_at_a_time_after_their_dependencies(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    SHARED["value"] = "decoded once"
    steps = [demo.Step("a", _recording(record, "a")), demo.Step("b", _recording(record, "b")),
             demo.Step("c", _recording(record, "c"), after=("a",)),
             demo.Step("d", _recording(record, "d"), after=("a", "b", "c")), demo.Step("e", _recording(record, "e"))]
    timings = demo.run_steps(steps, jobs=2, log_dir=tmp_path / "logs", cores=4)
    runs = _records(record)
    assert set(timings) == set(runs) == {"a", "b", "c", "d", "e"}
    assert all(r["threads"] == 2 and r["pid"] != os.getpid() for r in runs.values())  # forked, cores // jobs threads
    assert all(r["shared"] == "decoded once" for r in runs.values())  # what the parent held before the fork
    assert runs["a"]["start"] < runs["b"]["end"] and runs["b"]["start"] < runs["a"]["end"]  # side by side
    assert runs["c"]["start"] >= runs["a"]["end"]
    assert runs["d"]["start"] >= max(runs[n]["end"] for n in "abc")
    assert runs["e"]["start"] >= min(runs["a"]["end"], runs["b"]["end"])  # ready from the start, but no slot
    for name in "abcde":  # never more than two at once
        at_start = [n for n, r in runs.items() if r["start"] <= runs[name]["start"] < r["end"]]
        assert len(at_start) <= 2
    assert "c says hello, parent value decoded once" in (tmp_path / "logs" / "c.log").read_text()


def test_one_job_runs_in_this_process_in_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = tmp_path / "record.jsonl"
    steps = [demo.Step("late", _recording(record, "late", 0), after=("early",)),
             demo.Step("early", _recording(record, "early", 0))]
    demo.run_steps(steps, jobs=1, log_dir=tmp_path / "logs", cores=2)
    runs = _records(record)
    assert runs["late"]["start"] >= runs["early"]["end"]
    assert {r["pid"] for r in runs.values()} == {os.getpid()} and {r["threads"] for r in runs.values()} == {2}
    assert "early says hello" in capsys.readouterr().out  # on the terminal, no log files
    assert not (tmp_path / "logs").exists()


def _failing(threads: int) -> None:
    print("about to fail")
    raise SystemExit("avssl pretrain failed with exit code 1")


def test_a_failed_step_stops_the_others_and_shows_its_log(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    steps = [demo.Step("slow", _recording(record, "slow", 30)), demo.Step("broken", _failing),
             demo.Step("after", _recording(record, "after"), after=("broken",))]
    start = time.time()
    with pytest.raises(SystemExit, match=r"(?s)demo step broken failed.*broken\.log.*about to fail"
                                         r".*avssl pretrain failed with exit code 1"):
        demo.run_steps(steps, jobs=2, log_dir=tmp_path / "logs", cores=2)
    assert time.time() - start < 20  # the slow step was stopped, not waited for
    assert not record.exists()  # neither the slow step nor the one after the failure finished


def test_steps_that_cannot_start_are_an_error(tmp_path: Path) -> None:
    noop = _recording(tmp_path / "record.jsonl", "x", 0)
    with pytest.raises(ValueError, match="unknown dependencies"):
        demo.run_steps([demo.Step("a", noop, after=("missing",))], jobs=2, log_dir=tmp_path, cores=2)
    with pytest.raises(ValueError, match="wait on each other"):
        demo.run_steps([demo.Step("a", noop, after=("b",)), demo.Step("b", noop, after=("a",))], jobs=2,
                       log_dir=tmp_path, cores=2)


def test_demo_graph_runs_downstream_steps_after_the_checkpoints_they_read(tmp_path: Path) -> None:
    steps = demo.demo_steps(tmp_path, [], ["avc", "avts", "selavi"], ["finetune", "localize", "separate"], epochs=1)
    after = {s.name: set(s.after) for s in steps}
    assert after == {"avc": set(), "avts": set(), "selavi": set(), "separate": {"avc"}, "finetune": {"avc"},
                     "probe_random": set(), "localize": {"avc", "avts", "selavi"}}
    # the separation (one thread) is taken as soon as the first method ends, before the other methods
    assert [s.name for s in steps].index("separate") < [s.name for s in steps].index("avts")


@pytest.mark.parametrize("flag", ["--jobs", "--epochs"])
def test_jobs_or_epochs_below_one_is_refused(flag: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["demo.py", "--out", str(tmp_path), flag, "0"])
    with pytest.raises(SystemExit) as exit_info:
        demo.main()
    assert exit_info.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the synthetic set is made


def _command_lines(monkeypatch: pytest.MonkeyPatch, out: Path, seed: int) -> dict[str, list[list[str]]]:
    """Each demo step's `avssl` command lines (nothing run), AVC and AVTS with every downstream step."""
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda *argv: calls.append(list(argv)))
    lines = {}
    for s in demo.demo_steps(out, ["data.shards=S"], ["avc", "avts"], ["finetune", "localize", "separate"], 3, seed):
        calls.clear()
        s.run(1)
        lines[s.name] = list(calls)
    return lines


def test_each_recipe_keeps_its_own_epochs_unless_epochs_is_given(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda *argv: calls.append(list(argv)))
    for epochs in (None, 5):
        calls.clear()
        (step_,) = [s for s in demo.demo_steps(tmp_path, [], ["xdc"], [], epochs) if s.name == "xdc"]
        step_.run(1)
        pretrain = [argv for argv in calls if argv[0] == "pretrain"]
        assert [a for a in pretrain[0] if a.startswith("trainer.max_epochs")] == (
            ["trainer.max_epochs=5"] if epochs else [])


def test_seed_zero_keeps_the_recorded_command_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines = _command_lines(monkeypatch, tmp_path, seed=0)
    recipes, probe = demo.RECIPES, str(demo.RECIPES / "eval" / "synth_probe.yaml")
    cache = f"probe.cache_dir={tmp_path / 'feature_cache'}"
    assert lines["avc"] == [
        ["pretrain", str(recipes / "synth" / "avc_small.yaml"), "data.shards=S", f"run_dir={tmp_path / 'avc'}",
         "trainer.max_epochs=3"],
        ["probe", probe, "data.shards=S", cache, f"probe.encoders={tmp_path / 'avc' / 'export'}",
         f"run_dir={tmp_path / 'probe_avc'}"]]
    assert lines["probe_random"] == [["probe", probe, "data.shards=S", cache, "probe.encoders=random",
                                      f"run_dir={tmp_path / 'probe_random'}"]]
    export = tmp_path / "avc" / "export"
    assert lines["finetune"] == [["finetune", str(recipes / "eval" / "synth_finetune.yaml"), "data.shards=S",
                                  f"finetune.encoders={export}", f"run_dir={tmp_path / 'finetune'}"]]
    assert lines["separate"] == [["separate", str(recipes / "eval" / "synth_separation.yaml"), "data.shards=S",
                                  f"separation.encoders={export}", f"run_dir={tmp_path / 'separate'}"]]
    assert [argv[-1] for argv in lines["localize"]] == [f"run_dir={tmp_path / n}"
                                                         for n in ("localize_random", "localize_avc", "localize_avts")]
    assert not any(a.startswith("seed=") for argvs in lines.values() for argv in argvs for a in argv)


def test_a_seed_goes_to_every_training_step_in_its_own_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = demo.seed_dir(tmp_path, 2)
    assert root == tmp_path / "seed2" and demo.seed_dir(tmp_path, 0) == tmp_path
    seeded, plain = _command_lines(monkeypatch, root, seed=2), _command_lines(monkeypatch, root, seed=0)
    for name, argvs in seeded.items():
        for argv, unseeded in zip(argvs, plain[name], strict=True):
            if argv[0] == "separate":  # its separation.seed also draws the test mixtures: the same for every seed
                assert argv == unseeded
            else:  # seed=2 right after the shared options; the rest as with seed 0
                assert argv == unseeded[:3] + ["seed=2"] + unseeded[3:], argv
            assert all(str(tmp_path) not in a or str(root) in a for a in argv[2:])  # run folders under seed2
    assert len(seeded["localize"]) == 3 and seeded["avc"][0][0] == "pretrain"


def test_main_with_a_seed_reuses_the_shared_data_and_writes_under_its_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "labels.csv").write_text("")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(
        {"num_samples": 3, "hours": 0.01, "splits": {"train": {"shards": ["a"]}}, "skipped": [], "classes": ["x"]}))
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda *argv: calls.append(list(argv)))
    probe = {m: {"random": 10.0, "pretrained": 50.0} for m in ("video", "audio", "both")}
    collected: list[Path] = []

    def fake_results(out: Path, methods: list[str], downstream: list[str]) -> dict:
        collected.append(out)
        return {"avc": {"probe": probe, "pretext": {"val_accuracy": 0.7}}}

    monkeypatch.setattr(demo, "collect_results", fake_results)
    monkeypatch.setattr("sys.argv", ["demo.py", "--out", str(tmp_path), "--seed", "3", "--jobs", "1",
                                     "--downstream", "", "--epochs", "1"])
    demo.main()
    assert [argv[0] for argv in calls] == ["pretrain", "probe", "probe"]  # no synth, no shards: shared
    assert all("seed=3" in argv and f"data.shards={tmp_path / 'shards'}" in argv for argv in calls)
    assert f"run_dir={tmp_path / 'seed3' / 'avc'}" in calls[0]
    assert collected == [tmp_path / "seed3"]
    assert json.loads((tmp_path / "seed3" / "results.json").read_text())["avc"]["probe"] == probe
    assert not (tmp_path / "results.json").exists()
    assert f"written: {tmp_path / 'seed3' / 'results.json'}" in capsys.readouterr().out


def test_a_negative_seed_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                    tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["demo.py", "--out", str(tmp_path), "--seed", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        demo.main()
    assert exit_info.value.code == 2 and "--seed must be at least 0, got -1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_retrieval_runs_last_for_random_init_and_every_method(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda *argv: calls.append(list(argv)))
    steps = demo.demo_steps(tmp_path, ["data.shards=S"], ["avc", "avts"], ["localize", "retrieve"], 3)
    assert steps[-1].name == "retrieve" and set(steps[-1].after) == {"avc", "avts"}
    steps[-1].run(1)
    recipe = str(demo.RECIPES / "eval" / "synth_retrieval.yaml")
    common = ["retrieve", recipe, "data.shards=S", f"retrieval.cache_dir={tmp_path / 'feature_cache'}"]
    assert calls == [[*common, "retrieval.checkpoint=random", f"run_dir={tmp_path / 'retrieve_random'}"]] + [
        [*common, f"retrieval.checkpoint={tmp_path / m / 'checkpoints' / 'last.ckpt'}",
         f"run_dir={tmp_path / f'retrieve_{m}'}"] for m in ("avc", "avts")]


def test_retrieval_results_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def scores(r1: float) -> dict:
        return {"r@1": r1, "r@5": 50.0, "r@10": 100.0, "median_rank": 5.5}

    for name, r1 in (("random", 10.0), ("avc", 40.0)):
        (tmp_path / f"retrieve_{name}").mkdir()
        (tmp_path / f"retrieve_{name}" / "metrics.json").write_text(json.dumps(
            {"video_to_audio": scores(r1), "audio_to_video": scores(r1 + 1), "num_items": 10, "checkpoint": name}))
    (tmp_path / "probe_random").mkdir()
    probe = {m: {"test_video_top1": 12.5} for m in ("video", "audio", "both")}
    (tmp_path / "probe_random" / "metrics.json").write_text(json.dumps(probe))
    (tmp_path / "probe_avc").mkdir()
    (tmp_path / "probe_avc" / "metrics.json").write_text(json.dumps(probe))
    (tmp_path / "avc" / "csv").mkdir(parents=True)
    (tmp_path / "avc" / "csv" / "metrics.csv").write_text("val/accuracy\n0.7\n")
    results = demo.collect_results(tmp_path, ["avc"], ["retrieve"])
    assert results["retrieval"] == {
        "random": {"video_to_audio": scores(10.0), "audio_to_video": scores(11.0), "num_items": 10},
        "avc": {"video_to_audio": scores(40.0), "audio_to_video": scores(41.0), "num_items": 10}}
    demo.print_downstream(results, ["avc"])
    assert capsys.readouterr().out == (
        "video↔audio retrieval among the 10 test clips (R@1 / R@5 / R@10 %, median rank; chance R@1 10.0 %):\n"
        "                           video → audio                audio → video\n"
        "  random      10.0 /  50.0 / 100.0,  5.5   11.0 /  50.0 / 100.0,  5.5\n"
        "  avc         40.0 /  50.0 / 100.0,  5.5   41.0 /  50.0 / 100.0,  5.5\n")


def test_xdc_results_report_the_nmi_of_its_last_clustering(tmp_path: Path) -> None:
    probe = {m: {"test_video_top1": top1} for m, top1 in (("video", 60.0), ("audio", 90.0), ("both", 92.0))}
    for folder in ("probe_random", "probe_xdc"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(probe))
    (tmp_path / "xdc" / "csv").mkdir(parents=True)
    (tmp_path / "xdc" / "csv" / "metrics.csv").write_text(
        "epoch,train/xdc_nmi,val/nmi_video_head\n0,0.25,\n7,,0.5\n7,0.75,\n")
    entry = demo.collect_results(tmp_path, ["xdc"], [])["xdc"]
    assert entry["nmi"] == 0.75 and entry["pretext"] == {"val_nmi_video_head": 0.5}
    assert entry["probe"]["audio"] == {"random": 90.0, "pretrained": 90.0}


def test_cav_mae_results_keep_the_reconstruction_beside_the_patch_mean(tmp_path: Path) -> None:
    probe = {m: {"test_video_top1": 50.0} for m in ("video", "audio", "both")}
    for folder in ("probe_random_cav_mae", "probe_cav_mae"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(probe))
    (tmp_path / "cav_mae" / "csv").mkdir(parents=True)
    (tmp_path / "cav_mae" / "csv" / "metrics.csv").write_text(
        "step,val/reconstruction_ratio,val/reconstruction_video,val/patch_mean_video,val/reconstruction_audio,"
        "val/patch_mean_audio\n10,0.9,0.8,0.99,1.0,0.98\n20,0.6,0.5,0.99,0.7,0.98\n")
    entry = demo.collect_results(tmp_path, ["cav_mae"], [])["cav_mae"]
    assert entry["pretext"] == {"val_reconstruction_ratio": 0.6}
    assert entry["reconstruction"] == {"video": {"error": 0.5, "patch_mean": 0.99},
                                       "audio": {"error": 0.7, "patch_mean": 0.98}}


def test_transformer_methods_are_read_against_a_random_init_probe_of_their_own_architecture(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda *argv: calls.append(list(argv)))
    steps = {s.name: s for s in demo.demo_steps(tmp_path, ["data.shards=S"], ["avc", "vatt"], [], 3)}
    assert set(steps) == {"avc", "vatt", "probe_random", "probe_random_vatt"}
    steps["probe_random_vatt"].run(1)
    assert calls == [["probe", str(demo.RECIPES / "eval" / "synth_probe_vatt.yaml"), "data.shards=S",
                      f"probe.cache_dir={tmp_path / 'feature_cache'}", "probe.encoders=random",
                      f"run_dir={tmp_path / 'probe_random_vatt'}"]]
    for folder, top1 in (("probe_random", 10.0), ("probe_avc", 60.0), ("probe_random_vatt", 20.0),
                         ("probe_vatt", 45.0)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(
            {m: {"test_video_top1": top1 + i} for i, m in enumerate(("video", "audio", "both"))}))
    for method in ("avc", "vatt"):
        (tmp_path / method / "csv").mkdir(parents=True)
        (tmp_path / method / "csv" / "metrics.csv").write_text("val/accuracy,val/retrieval_top1\n0.7,0.3\n")
    results = demo.collect_results(tmp_path, ["avc", "vatt"], [])
    assert results["avc"]["probe"]["video"] == {"random": 10.0, "pretrained": 60.0}
    assert results["vatt"]["probe"]["audio"] == {"random": 21.0, "pretrained": 46.0}


def test_a_later_demo_in_the_same_folder_keeps_the_earlier_methods_figures(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`make demo METHODS=avenet` then `METHODS=lvs` into one folder: results.json holds both (the
    second run's entries win where both have one), and the run says what it kept."""
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "labels.csv").write_text("")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(
        {"num_samples": 3, "hours": 0.01, "splits": {"train": {"shards": ["a"]}}, "skipped": [], "classes": ["x"]}))
    monkeypatch.setattr(demo, "run", lambda *argv: None)
    probe = {m: {"random": 10.0, "pretrained": 50.0} for m in ("video", "audio", "both")}
    loc = {"ciou": 0.5, "auc": 0.4, "mean_ciou": 0.4, "rule": "gt_area", "random_ciou": 0.0, "random_auc": 0.1,
           "whole_image_ciou": 0.0, "whole_image_mean_ciou": 0.2}
    earlier = {"avenet": {"probe": probe, "pretext": {"val_accuracy": 0.7}}, "localization": {"avenet": loc},
               "lvs": {"probe": "stale", "pretext": {}}}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    now = {"lvs": {"probe": probe, "pretext": {"val_accuracy": 0.8}}, "localization": {"lvs": {**loc, "ciou": 0.75}}}
    monkeypatch.setattr(demo, "collect_results", lambda out, methods, downstream: json.loads(json.dumps(now)))
    monkeypatch.setattr("sys.argv", ["demo.py", "--out", str(tmp_path), "--methods", "lvs", "--jobs", "1",
                                     "--downstream", "localize", "--epochs", "1"])
    demo.main()
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"lvs": now["lvs"], "avenet": earlier["avenet"],
                       "localization": {"lvs": now["localization"]["lvs"], "avenet": loc}}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.json")] == []  # no temporary left
    assert (f"kept from the earlier {tmp_path / 'results.json'} (steps not run this time; their run folders are in "
            f"{tmp_path}): avenet, localization.avenet") in capsys.readouterr().out


def test_an_unreadable_earlier_results_json_is_replaced_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "results.json").write_text("{not json")
    assert demo.read_previous_results(tmp_path / "results.json") == {}
    assert capsys.readouterr().out.startswith(f"warning: {tmp_path / 'results.json'} is not readable JSON (")
    assert demo.read_previous_results(tmp_path / "missing.json") == {}
