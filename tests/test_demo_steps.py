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


def test_jobs_below_one_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                   tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["demo.py", "--out", str(tmp_path), "--jobs", "0"])
    with pytest.raises(SystemExit) as exit_info:
        demo.main()
    assert exit_info.value.code == 2 and "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before the synthetic set is made
