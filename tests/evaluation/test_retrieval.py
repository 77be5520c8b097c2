"""Cross-modal retrieval: partner ranks, recall@K and median rank against a hand-computed
example, torchmetrics, scikit-learn and numpy; all-pairs scoring through a method's
row-wise score; the verb end to end on a tiny synthetic set (random init and a trained
checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score
from torchmetrics.retrieval import RetrievalRecall

from avssl.cli import main
from avssl.evaluation.features import Features
from avssl.evaluation.retrieval import partner_ranks, recall_at, retrieval_scores, score_matrix, subset
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_hand_computed_example() -> None:
    # rows: videos, columns: audios; the partner of video i is audio i
    scores = torch.tensor([[0.9, 0.1, 0.5],    # partner first           → rank 1
                           [0.8, 0.2, 0.3],    # partner last            → rank 3
                           [0.4, 0.7, 0.6]])   # partner second          → rank 2
    assert partner_ranks(scores).tolist() == [1, 3, 2]
    # columns (audio → video): audio 0 [0.9, 0.8, 0.4] → 1; audio 1 [0.1, 0.2, 0.7] → 2; audio 2 [0.5, 0.3, 0.6] → 1
    assert partner_ranks(scores.T).tolist() == [1, 2, 1]
    result = retrieval_scores(scores, [1, 2])
    assert result["video_to_audio"] == {"r@1": pytest.approx(100 / 3), "r@2": pytest.approx(200 / 3),
                                        "median_rank": 2.0}
    assert result["audio_to_video"] == {"r@1": pytest.approx(200 / 3), "r@2": 100.0, "median_rank": 1.0}
    assert result["num_items"] == 3


def test_ties_count_against_the_query() -> None:
    assert partner_ranks(torch.zeros(4, 4)).tolist() == [4, 4, 4, 4]  # a constant score retrieves nothing
    assert partner_ranks(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 3.0]])).tolist() == [2, 2, 1]


def test_median_rank_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert recall_at(torch.tensor([1, 2, 5, 9]), [1])["median_rank"] == 3.5


def test_recall_matches_torchmetrics_sklearn_and_numpy_on_random_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    n, ks = 57, [1, 5, 10]
    scores = torch.randn(n, n, generator=generator, dtype=torch.float64)  # no ties
    result = retrieval_scores(scores, ks)
    for direction, matrix in (("video_to_audio", scores), ("audio_to_video", scores.T)):
        target = torch.eye(n, dtype=torch.bool)
        indexes = torch.arange(n)[:, None].expand(n, n)
        # numpy: the partner's position in each row sorted by descending score, 1-based
        order = np.argsort(-matrix.numpy(), axis=1, kind="stable")
        ranks = np.argmax(order == np.arange(n)[:, None], axis=1) + 1
        for k in ks:
            expected = RetrievalRecall(top_k=k)(matrix.flatten(), target.flatten(), indexes=indexes.flatten())
            assert result[direction][f"r@{k}"] == pytest.approx(float(expected) * 100, abs=1e-5)  # float32
            assert result[direction][f"r@{k}"] == pytest.approx((ranks <= k).mean() * 100, abs=1e-9)
            # sklearn: each query a classification whose class is its partner's column
            top_k = top_k_accuracy_score(np.arange(n), matrix.numpy(), k=k, labels=np.arange(n))
            assert result[direction][f"r@{k}"] == pytest.approx(top_k * 100, abs=1e-9)
        assert result[direction]["median_rank"] == float(np.median(ranks))


def test_score_matrix_applies_the_row_wise_score_to_every_pair_in_blocks() -> None:
    generator = torch.Generator().manual_seed(1)
    video, audio = torch.randn(7, 3, generator=generator), torch.randn(7, 5, generator=generator)
    weight = torch.randn(3, 5, generator=generator)
    calls = []

    def bilinear(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        calls.append(len(v))
        return ((v @ weight) * a).sum(-1)

    scores = score_matrix(bilinear, video, audio, pairs_per_batch=20)  # 20 // 7 = 2 videos a block
    torch.testing.assert_close(scores, video @ weight @ audio.T)
    assert calls == [14, 14, 14, 7]


def test_non_square_scores_are_refused() -> None:
    with pytest.raises(ValueError, match=r"as many videos as audios, got \(2, 3\)"):
        retrieval_scores(torch.zeros(2, 3), [1])


def _features(labels: list[int]) -> Features:
    n = len(labels)
    return Features({"video": np.zeros((n, 2)), "audio": np.zeros((n, 2))}, np.asarray(labels), np.arange(n),
                    np.zeros(n))


def test_subset_takes_the_first_clips_of_each_class_then_the_first_items() -> None:
    features = _features([0, 1, 0, 0, 2, 1, 1, 0])
    assert subset(features, None, None).tolist() == list(range(8))
    assert subset(features, 2, None).tolist() == [0, 1, 2, 4, 5]
    assert subset(features, 2, 3).tolist() == [0, 1, 2]
    assert subset(features, None, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="retrieval.per_class needs one label per clip"):
        subset(_features([0, -1, 1]), 1, None)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("retrieval"))


SMALL = ["data.num_workers=0", "data.batch_size=6", "data.video.size=32",
         "model.video_encoder.widths=[8,8,16]", "model.audio_encoder.widths=[8,8,16]"]


@pytest.mark.slow
def test_retrieve_random_and_trained_checkpoint(tiny_shards: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(RECIPES / "eval" / "synth_retrieval.yaml")
    common = [f"data.shards={tiny_shards}", *SMALL, f"retrieval.cache_dir={tmp_path / 'cache'}"]
    assert main(["retrieve", recipe, *common, f"run_dir={tmp_path / 'random'}"]) == 0
    metrics = json.loads((tmp_path / "random" / "metrics.json").read_text())
    test_videos = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["test"]["num_samples"]
    assert metrics["num_items"] == test_videos == 6
    for direction in ("video_to_audio", "audio_to_video"):
        scores = metrics[direction]
        assert set(scores) == {"r@1", "r@5", "r@10", "median_rank"}
        assert 0 <= scores["r@1"] <= scores["r@5"] <= scores["r@10"] == 100.0  # 6 items: every partner in the top 10
        assert 1 <= scores["median_rank"] <= 6
    v2a, a2v = metrics["video_to_audio"], metrics["audio_to_video"]
    assert capsys.readouterr().out == (
        f"retrieval with random (test, 6 clips, one per video):\n"
        f"  video to audio: R@1 {v2a['r@1']:.1f} R@5 {v2a['r@5']:.1f} R@10 {v2a['r@10']:.1f}, "
        f"median rank {v2a['median_rank']:g}\n"
        f"  audio to video: R@1 {a2v['r@1']:.1f} R@5 {a2v['r@5']:.1f} R@10 {a2v['r@10']:.1f}, "
        f"median rank {a2v['median_rank']:g}\n"
        f"written: {tmp_path / 'random' / 'metrics.json'}\n")

    assert main(["retrieve", recipe, *common, f"run_dir={tmp_path / 'subset'}", "retrieval.max_items=4",
                 "retrieval.ks=[1,2]"]) == 0
    small = json.loads((tmp_path / "subset" / "metrics.json").read_text())
    assert small["num_items"] == 4 and set(small["video_to_audio"]) == {"r@1", "r@2", "median_rank"}
    assert small["clips"]["test"] == metrics["clips"]["test"]  # the whole split was read, then 4 retrieved among

    # a trained checkpoint: its task's own cross-modal score (AVC: the correspondence head)
    pretrain_dir = tmp_path / "avc"
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={pretrain_dir}", "trainer.max_epochs=1", "logger.wandb=false"]) == 0
    ckpt = pretrain_dir / "checkpoints" / "last.ckpt"
    assert main(["retrieve", recipe, *common, f"run_dir={tmp_path / 'avc_ret'}",
                 f"retrieval.checkpoint={ckpt}"]) == 0
    trained = json.loads((tmp_path / "avc_ret" / "metrics.json").read_text())
    assert trained["num_items"] == 6 and trained["checkpoint"] == str(ckpt)


def test_export_folder_is_refused_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text('{"splits": {}}')  # past the CLI's check of data.shards
    assert main(["retrieve", str(RECIPES / "eval" / "synth_retrieval.yaml"), f"run_dir={tmp_path}",
                 f"data.shards={tmp_path}", f"retrieval.checkpoint={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"avssl retrieve: retrieval.checkpoint={tmp_path}: give a pretext run's .ckpt (the method's "
                   "cross-modal score needs its cross-modal head, which an export folder does not hold) or "
                   "'random'\n")


@pytest.mark.parametrize("override,key", [("retrieval.ks=[0,5]", "retrieval.ks"),
                                          ("retrieval.max_items=1", "retrieval.max_items"),
                                          ("retrieval.topk=5", "retrieval.topk")])
def test_recipe_mistakes_are_usage_errors(override: str, key: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text('{"splits": {}}')
    assert main(["retrieve", str(RECIPES / "eval" / "synth_retrieval.yaml"), f"run_dir={tmp_path}",
                 f"data.shards={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avssl retrieve: ") and key in err and err.count("\n") == 1
