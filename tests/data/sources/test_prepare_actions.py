"""UCF101 and HMDB51 adapters on miniature replicas of the official layouts."""
from __future__ import annotations

from pathlib import Path

import pytest
from prepare_fixtures import SMALL, SMALL_FLAGS, by_split, read_out, skipped_files, video

from avssl.cli import main
from avssl.data.sources.actions import prepare_hmdb51, prepare_ucf101, read_ucf101_classes
from avssl.data.sources.common import PrepareError, hashed_split

UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "JumpRope"]
UCF_TRAIN_1 = [  # (list path, 1-based label); the folder/file case mismatch is UCF101's own
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 1),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi", 1),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi", 1),
    ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2),
    ("JumpRope/v_JumpRope_g10_c01.avi", 3),
    ("JumpRope/v_JumpRope_g11_c01.avi", 3),  # listed, not on disk
]
UCF_TEST_1 = [
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    "HandstandPushups/v_HandStandPushups_g01_c01.avi",
    "JumpRope/v_JumpRope_g01_c01.avi",
]
MISSING = "JumpRope/v_JumpRope_g11_c01.avi"


def _crlf(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # the release's line endings


def make_ucf101(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    _crlf(lists / "classInd.txt", [f"{k + 1} {name}" for k, name in enumerate(UCF_CLASSES)])
    _crlf(lists / "trainlist01.txt", [f"{clip} {label}" for clip, label in UCF_TRAIN_1])
    _crlf(lists / "testlist01.txt", UCF_TEST_1)
    # fold 2 swaps the roles of the groups
    number = {name: k + 1 for k, name in enumerate(UCF_CLASSES)}
    _crlf(lists / "trainlist02.txt", [f"{clip} {number[clip.split('/')[0]]}" for clip in UCF_TEST_1])
    _crlf(lists / "testlist02.txt", [clip for clip, _ in UCF_TRAIN_1])
    for clip in [c for c, _ in UCF_TRAIN_1] + UCF_TEST_1:
        if clip != MISSING:
            # HandstandPushups has no audio track in the release
            video(root / "UCF-101" / clip, audio="HandStand" not in clip)
    return root


def _stem_id(clip: str) -> str:
    return clip[: -len(".avi")]


def _seed_splitting(keys: list[str], fraction: float) -> int:
    """A seed for which the held-out hash puts some groups in train and some in val."""
    for seed in range(100):
        if {hashed_split(k, seed, fraction) for k in keys} == {"train", "val"}:
            return seed
    raise AssertionError("no seed splits the groups")


def test_ucf101_fold1_labels_splits_groups_and_missing_report(tmp_path, capsys):
    root = make_ucf101(tmp_path / "UCF101")
    groups = sorted({f"{c.split('/')[0]}/{c.split('_')[-2]}" for c, _ in UCF_TRAIN_1 if c != MISSING})
    seed = _seed_splitting(groups, 0.5)
    out = tmp_path / "shards"
    code = main(["prepare", "ucf101", "--root", str(root), "--out", str(out), "--fold", "1",
                 "--val-fraction", "0.5", "--seed", str(seed), *SMALL_FLAGS])
    assert code == 0

    manifest, samples = read_out(out)
    assert manifest["classes"] == UCF_CLASSES
    assert manifest["source"]["benchmark"] == "ucf101" and manifest["source"]["fold"] == 1
    splits = by_split(samples)
    assert splits["test"] == {_stem_id(c) for c in UCF_TEST_1}
    train_ids = {_stem_id(c) for c, _ in UCF_TRAIN_1 if c != MISSING}
    assert splits["train"] | splits["val"] == train_ids and not splits["train"] & splits["val"]
    assert splits["train"] and splits["val"]
    for video_id in train_ids:  # val holds out whole groups (gXX of one class)
        group = f"{video_id.split('/')[0]}/{video_id.split('_')[-2]}"
        assert samples[video_id]["json"]["split"] == hashed_split(group, seed, 0.5)
    first = samples["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]["json"]["split"]
    assert samples["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02"]["json"]["split"] == first
    for clip, label in UCF_TRAIN_1[:-1]:
        assert samples[_stem_id(clip)]["json"]["label"] == label - 1  # classInd is 1-based
    assert samples["JumpRope/v_JumpRope_g01_c01"]["json"]["label"] == 2

    silent = samples["HandstandPushups/v_HandStandPushups_g08_c01"]
    assert silent["json"]["has_audio"] is False  # packed with a silent track, not skipped
    assert samples["JumpRope/v_JumpRope_g10_c01"]["json"]["has_audio"] is True
    annotation = samples["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"]["annotation.json"]
    assert annotation["folds"] == {"1": "test", "2": "train"} and annotation["group"] == "g01"
    assert annotation["video"] == "original" and annotation["source_file"].endswith("v_ApplyEyeMakeup_g01_c01.avi")
    assert "annotation.json" in silent["json"]["extras"]

    reasons = skipped_files(manifest)
    assert list(reasons) == [f"UCF-101/{MISSING}"]
    assert reasons[f"UCF-101/{MISSING}"].startswith("missing: listed in ucfTrainTestlist/trainlist01.txt")
    summary = (out / "prepare.json").read_text()
    assert '"missing": 1' in summary and (out / "labels.csv").is_file()
    assert not list(out.glob(".staging-*"))
    assert f"missing UCF-101/{MISSING}" in capsys.readouterr().out


def test_ucf101_fold2_and_layout_errors(tmp_path, capsys):
    root = make_ucf101(tmp_path / "UCF101")
    report = prepare_ucf101(root, tmp_path / "fold2", fold=2, val_fraction=0.0, settings=SMALL)
    _, samples = read_out(tmp_path / "fold2")
    splits = by_split(samples)
    assert splits["test"] == {_stem_id(c) for c, _ in UCF_TRAIN_1 if c != MISSING}
    assert splits["train"] == {_stem_id(c) for c in UCF_TEST_1} and "val" not in splits
    assert report.missing[0]["reason"].startswith("missing: listed in ucfTrainTestlist/testlist02.txt")

    (root / "ucfTrainTestlist" / "classInd.txt").unlink()
    with pytest.raises(PrepareError, match="ucfTrainTestlist/classInd.txt"):
        prepare_ucf101(root, tmp_path / "x", settings=SMALL)
    assert main(["prepare", "ucf101", "--root", str(root), "--out", str(tmp_path / "y")]) == 2
    assert "classInd.txt" in capsys.readouterr().err
    assert main(["prepare", "vggsound", "--root", str(root), "--out", str(tmp_path / "z"), "--fold", "2"]) == 2
    assert "--fold does not apply to vggsound" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fold"):
        prepare_ucf101(root, tmp_path / "x", fold=4)


HMDB = {  # class → [(clip, marks of split 1, 2)]
    "brush_hair": [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "1", "2"),
        ("April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "1", "2"),
        ("Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi", "2", "1"),
        ("Aussie_Brushing_brush_hair_u_nm_np1_fr_med_0.avi", "0", "1"),  # not in fold 1
    ],
    "sword_exercise": [
        ("Blade_Of_Fury_-_Scene_1_sword_exercise_f_cm_np1_ri_bad_3.avi", "1", "1"),
        ("Parkour_sword_exercise_f_cm_np1_fr_goo_0.avi", "1", "0"),  # listed, not on disk
        ("Sword_Moves_sword_exercise_u_cm_np1_le_goo_2.avi", "2", "2"),
    ],
}


def test_hmdb51_marks_folds_and_groups(tmp_path):
    root = tmp_path / "HMDB51"
    for name, clips in HMDB.items():
        for k in (1, 2):
            lines = [f"{clip} {marks[k - 1]} " for clip, *marks in clips]  # trailing blank as released
            (root / "testTrainMulti_7030_splits").mkdir(parents=True, exist_ok=True)
            (root / "testTrainMulti_7030_splits" / f"{name}_test_split{k}.txt").write_text("\n".join(lines) + "\n")
        for clip, *_ in clips:
            if not clip.startswith("Parkour"):
                video(root / "hmdb51_org" / name / clip, seconds=0.6, audio=False)
    out = tmp_path / "shards"
    report = prepare_hmdb51(root, out, fold=1, val_fraction=0.5, seed=3, settings=SMALL)

    manifest, samples = read_out(out)
    assert manifest["classes"] == ["brush_hair", "sword_exercise"]
    assert "brush_hair/Aussie_Brushing_brush_hair_u_nm_np1_fr_med_0" not in samples  # mark 0: unused
    splits = by_split(samples)
    assert splits["test"] == {"brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0",
                              "sword_exercise/Sword_Moves_sword_exercise_u_cm_np1_le_goo_2"}
    april = [samples[f"brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_{i}"] for i in (0, 1)]
    assert april[0]["json"]["split"] == april[1]["json"]["split"] == hashed_split("brush_hair/April_09", 3, 0.5)
    assert april[0]["annotation.json"]["folds"] == {"1": "train", "2": "test"}
    assert april[0]["json"]["label"] == 0 and april[0]["json"]["has_audio"] is False
    blade = samples["sword_exercise/Blade_Of_Fury_-_Scene_1_sword_exercise_f_cm_np1_ri_bad_3"]
    assert blade["json"]["label"] == 1 and blade["annotation.json"]["group"] == "Blade_Of_Fury_-_Scene_1"
    assert [m["file"] for m in report.missing] == ["sword_exercise/Parkour_sword_exercise_f_cm_np1_fr_goo_0.avi"]
    assert report.num_packed == 5

    with pytest.raises(PrepareError, match="testTrainMulti_7030_splits"):
        prepare_hmdb51(tmp_path / "empty", tmp_path / "x", settings=SMALL)


@pytest.mark.parametrize("indices, problem", [
    ([1, 2, 4, 7], "3, 5-6 missing"),
    ([0, 1, 2, 2], "0 below 1; 2 listed more than once"),
])
def test_class_list_numbering_names_what_is_wrong(tmp_path, indices, problem):
    lists = tmp_path / "ucfTrainTestlist"
    _crlf(lists / "classInd.txt", [f"{k} Class{n}" for n, k in enumerate(indices)])
    with pytest.raises(ValueError) as error:
        read_ucf101_classes(lists)
    assert str(error.value) == f"{lists / 'classInd.txt'}: the indices must be 1, 2, … without gaps; {problem}"
    _crlf(lists / "classInd.txt", ["1 ApplyEyeMakeup", "ApplyLipstick"])
    with pytest.raises(ValueError) as error:
        read_ucf101_classes(lists)
    assert str(error.value) == (f"{lists / 'classInd.txt'} line 2: expected '<1-based index> <ClassName>', "
                                "got 'ApplyLipstick'")
