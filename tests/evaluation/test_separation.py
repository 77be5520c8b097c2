"""Mix-and-separate: the log-frequency warp, mask targets, ideal-mask reconstruction, a
training step, the Trainer's run of the training, the clips read through the data module, the
report, and `avssl separate` end to end on a tiny synthetic set."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from avssl.cli import main
from avssl.data.datamodule import DataConfig, ShardList
from avssl.data.targets import BOXES
from avssl.data.views import AudioView, VideoView
from avssl.evaluation.separation import (
    Clips,
    MixtureBatches,
    SeparationConfig,
    SeparationModel,
    VisualFeatures,
    box_cells,
    evaluation_pairs,
    load_clips,
    lr_schedule,
    make_optimizer,
    partners,
    report,
    score_sets,
    train,
    trainer_devices,
    training_batch,
    training_loss,
)
from avssl.evaluation.spectral import (
    StftSettings,
    apply_masks,
    mask_targets,
    predicted_masks,
    stft,
    unwarp_log_frequency,
    warp_harmonics,
    warp_log_frequency,
)
from avssl.metrics.separation import separation_metrics
from avssl.models.video import small3d
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RATE = 16000
SETTINGS = StftSettings(n_fft=512, hop=128, log_bins=128)


def tone(f0: float, harmonics: int = 4, seconds: float = 1.0, amplitude: float = 0.1) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE)) / RATE
    return amplitude * sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, harmonics + 1))


def test_warp_samples_the_log_frequency_grid() -> None:
    """Row y of the warped axis (y on [-1, 1]) reads linear position (21^((y+1)/2) - 11)/10."""
    bins = 257
    ramp = torch.arange(bins, dtype=torch.float32)[:, None].expand(bins, 5)  # value = linear bin index
    warped = warp_log_frequency(ramp, 128)
    y = torch.linspace(-1, 1, 128)
    expected = ((21 ** ((y + 1) / 2) - 11) / 10 + 1) / 2 * (bins - 1)
    torch.testing.assert_close(warped[:, 0], expected, atol=1e-3, rtol=1e-4)
    assert warped[64, 0] < 0.2 * (bins - 1), "half the warped rows cover the lowest fifth of the band"


def test_harmonic_stack_reads_multiples_of_each_rows_frequency() -> None:
    bins = 257
    ramp = torch.arange(bins, dtype=torch.float32)[:, None].expand(bins, 3)
    stack = warp_harmonics(ramp, 128, (1.0, 2.0, 0.5))
    assert stack.shape == (3, 128, 3)
    torch.testing.assert_close(stack[0], warp_log_frequency(ramp, 128))
    position = stack[0, :, 0]  # the linear bin each row reads
    low = position < (bins - 1) / 2
    torch.testing.assert_close(stack[1, low, 0], 2 * position[low], atol=1e-3, rtol=1e-4)
    assert (stack[1, ~low, 0] == bins - 1).all(), "above Nyquist: the Nyquist bin"
    torch.testing.assert_close(stack[2, :, 0], position / 2, atol=1e-3, rtol=1e-4)


def test_warp_and_inverse_round_trip() -> None:
    f = torch.linspace(0, 1, 257)[:, None]
    t = torch.linspace(0, 1, 40)[None, :]
    smooth = 1.0 + 0.5 * torch.sin(2 * math.pi * (1.5 * f + t)) + 0.3 * f  # smooth along frequency
    back = unwarp_log_frequency(warp_log_frequency(smooth[None, None], 128), 257)[0, 0]
    assert (back - smooth).abs().max() < 0.02  # bilinear interpolation error only
    # and the other way round, on the warped axis (the inverse first)
    warped_smooth = smooth[::2][:128]
    again = warp_log_frequency(unwarp_log_frequency(warped_smooth, 257), 128)
    assert (again - warped_smooth).abs().max() < 0.02
    noise = torch.rand(257, 40)
    assert (unwarp_log_frequency(warp_log_frequency(noise, 128), 257) - noise).abs().max() > 0.1, \
        "high linear frequencies are subsampled: a non-smooth input does not come back"


def test_mask_targets_by_hand() -> None:
    sources = torch.tensor([[3.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]]).reshape(1, 2, 1, 4)
    mixture = torch.tensor([4.0, 2.0, 2.0, 0.5]).reshape(1, 1, 1, 4)  # last bin: destructive interference
    binary = mask_targets(sources, mixture, "binary").reshape(2, 4)
    assert binary.tolist() == [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]  # 1 > 0.5·2 is false: strict
    ratio = mask_targets(sources, mixture, "ratio", ratio_max=3.0).reshape(2, 4)
    torch.testing.assert_close(ratio, torch.tensor([[0.75, 0.5, 0.0, 3.0], [0.25, 0.5, 1.0, 3.0]]))
    with pytest.raises(ValueError, match="mask type"):
        mask_targets(sources, mixture, "soft")


def test_tones_give_complementary_binary_masks() -> None:
    low, high = tone(220.0) / 2, tone(1900.0) / 2
    mixture = low + high
    mags = warp_log_frequency(stft(torch.stack([low, high]), SETTINGS).abs()[None], 128)
    mix_mag = warp_log_frequency(stft(mixture, SETTINGS).abs()[None, None], 128)
    masks = mask_targets(mags, mix_mag, "binary")[0]
    loud = mix_mag[0, 0] > 0.1 * mix_mag.max()
    assert masks[0][loud].sum() > 0 and masks[1][loud].sum() > 0
    assert (masks[0][loud] + masks[1][loud] == 1).float().mean() > 0.95  # one source owns each loud bin


@pytest.mark.parametrize("mask_type", ["binary", "ratio"])
def test_ideal_mask_reconstructs_the_sources(mask_type: str) -> None:
    sources = torch.stack([tone(233.0, amplitude=0.15), tone(587.0, harmonics=6, amplitude=0.05)]) / 2
    mixture = sources.sum(0)
    spec = stft(mixture, SETTINGS)
    mix_mag = warp_log_frequency(spec.abs()[None, None], 128)
    source_mag = warp_log_frequency(stft(sources, SETTINGS).abs()[None], 128)
    ideal = mask_targets(source_mag, mix_mag, mask_type)
    estimates = apply_masks(spec[None], ideal, SETTINGS, mixture.shape[-1], mask_type)[0]
    scores = separation_metrics(estimates[:, 1000:-1000], sources[:, 1000:-1000], mixture[1000:-1000])
    assert scores["sdr"] > 10 and scores["sdr_improvement"] > 8, scores
    wrong = apply_masks(spec[None], ideal.flip(1), SETTINGS, mixture.shape[-1], mask_type)[0]
    assert separation_metrics(wrong[:, 1000:-1000], sources[:, 1000:-1000], mixture[1000:-1000])["sdr"] < 0


def test_pairs_have_different_labels_and_are_deterministic() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    pairs = evaluation_pairs(labels, 6, seed=3)
    assert pairs.shape == (6, 2) and len(set(pairs[:, 0].tolist())) == 6
    assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()
    assert torch.equal(pairs, evaluation_pairs(labels, 6, seed=3))
    assert not torch.equal(pairs, evaluation_pairs(labels, 6, seed=4))
    with pytest.raises(ValueError, match="two labels"):
        partners(torch.zeros(4, dtype=torch.long), torch.arange(4), torch.Generator().manual_seed(0))


def _toy_clips(count: int = 8) -> Clips:
    """Clips whose label sets the pitch of their tone; random frames, a box per clip."""
    torch.manual_seed(0)
    label = torch.arange(count) % 4
    audio = torch.stack([tone(200.0 * (1 + int(c)), harmonics=3) for c in label])
    boxes = torch.full((count, 4, 4), float("nan"))
    boxes[:, 0] = torch.tensor([4.0, 6.0, 20.0, 24.0])
    video = torch.randint(0, 255, (count, 3, 1, 32, 32), dtype=torch.uint8)
    return Clips(video=video, audio=audio, label=label, index=torch.arange(count), boxes=boxes)


def test_lr_decays_tenfold_at_the_given_fractions_of_the_steps() -> None:
    cfg = SeparationConfig(steps=10, lr=1e-3, lr_decay_at=[0.4, 0.8])
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule, rates = lr_schedule(optimizer, cfg), []
    for _ in range(cfg.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1e-3] * 4 + [1e-4] * 4 + [1e-5] * 2)
    with pytest.raises(ValueError, match="lr_decay_at"):
        SeparationConfig(lr_decay_at=[1.2])


@pytest.mark.parametrize("mask_type", ["binary", "ratio"])
def test_one_training_step_reduces_the_loss(mask_type: str) -> None:
    cfg = SeparationConfig(batch_size=6, unet_width=8, unet_levels=4, channels=8, log_bins=64, mask=mask_type)
    clips = _toy_clips()
    model = SeparationModel(small3d(widths=(8, 16)), cfg, frame_size=32)
    model.train()
    model.video_encoder.eval()
    features = VisualFeatures(model, clips, torch.device("cpu"))
    batch = training_batch(clips, cfg, torch.Generator().manual_seed(0))
    rows, sources, mixture = batch
    assert (clips.label[rows[:, 0]] != clips.label[rows[:, 1]]).all()
    torch.testing.assert_close(mixture, sources.sum(1))
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("video_encoder.")],
                                 lr=1e-3)
    before = training_loss(model, features, clips, *batch)
    optimizer.zero_grad()
    before.backward()
    assert model.video_encoder.blocks[0][0].weight.grad is None, "the video encoder is frozen by default"
    optimizer.step()
    after = training_loss(model, features, clips, *batch)
    assert after.item() < before.item()


def test_mixture_batches_are_the_seeded_draws_of_training_batch() -> None:
    """``cfg.steps`` batches, those of one generator seeded with ``cfg.seed``; each pass the same."""
    cfg = SeparationConfig(steps=3, batch_size=4, seed=5)
    clips = _toy_clips()
    batches = MixtureBatches(clips, cfg)
    generator = torch.Generator().manual_seed(5)
    expected = [training_batch(clips, cfg, generator) for _ in range(3)]
    for _ in range(2):
        drawn = list(batches)
        assert len(batches) == len(drawn) == 3
        for got, want in zip(drawn, expected):
            for a, b in zip(got, want):
                assert torch.equal(a, b)


@pytest.mark.parametrize("finetune_video", [False, True])
def test_the_trainer_runs_the_hand_written_training_loop(finetune_video: bool) -> None:
    """The Trainer's steps are those of the loop it replaced (forward, zero_grad, backward,
    Adam step, scheduler step, per batch): the same losses and weights to the bit, with the
    learning rate divided by 10 mid-run and, when fine-tuned, the video encoder trained in eval mode."""
    cfg = SeparationConfig(steps=6, batch_size=4, unet_width=8, unet_levels=4, channels=8, log_bins=64,
                           lr_decay_at=[0.5], finetune_video=finetune_video, device="cpu")
    clips = _toy_clips()

    def fresh() -> tuple[SeparationModel, VisualFeatures]:
        torch.manual_seed(3)
        model = SeparationModel(small3d(widths=(8, 16)), cfg, frame_size=32)
        return model, VisualFeatures(model, clips, torch.device("cpu"))

    reference, features = fresh()
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(reference, cfg)
    schedule = lr_schedule(optimizer, cfg)
    reference.train()
    reference.video_encoder.eval()
    reference.video_encoder.requires_grad_(finetune_video)
    expected = []
    for _ in range(cfg.steps):
        loss = training_loss(reference, features, clips, *training_batch(clips, cfg, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        expected.append(loss.item())

    model, features = fresh()
    initial = {k: v.clone() for k, v in model.video_encoder.state_dict().items()}
    losses = train(model, clips, features, cfg)
    assert losses == expected and len(set(losses)) == cfg.steps
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, want), name
    trained = model.video_encoder.state_dict()
    assert not torch.equal(trained["blocks.0.0.weight"], initial["blocks.0.0.weight"]) == finetune_video
    assert all(torch.equal(trained[k], v) for k, v in initial.items() if "running_" in k), "BatchNorm stays frozen"
    assert not model.training and not model.video_encoder.training


def test_trainer_devices() -> None:
    assert trainer_devices(torch.device("cpu")) == {"accelerator": "cpu", "devices": 1}
    assert trainer_devices(torch.device("cuda")) == {"accelerator": "cuda", "devices": 1}
    assert trainer_devices(torch.device("cuda:1")) == {"accelerator": "cuda", "devices": [1]}


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_box_pooling_reads_only_the_box(reduce: str) -> None:
    cfg = SeparationConfig(channels=4, visual_hidden=0, visual_reduce=reduce)
    model = SeparationModel(small3d(widths=(8, 8)), cfg, frame_size=32)
    with torch.no_grad():
        model.visual.proj.weight.zero_()
        model.visual.proj.weight[:, 0] = 1.0
        model.visual.proj.bias.zero_()
    feature_map = torch.zeros(2, 8, 1, 8, 8)
    feature_map[:, 0, 0, 6, 6] = 5.0  # a hot cell in the bottom right (pixels 24-28)
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [20.0, 20.0, 32.0, 32.0]])  # 3×3 cells each
    inside = model.visual_vectors(feature_map, boxes)
    expected = 5.0 if reduce == "max" else 5.0 / 9
    assert inside[0, 0].item() == pytest.approx(0.5)
    assert inside[1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(expected)).item(), rel=1e-5)
    frame = model.visual_vectors(feature_map, torch.full((2, 4), float("nan")))  # NaN box: the whole frame
    expected = 5.0 if reduce == "max" else 5.0 / 64
    assert frame[:, 0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(expected)).item()] * 2, rel=1e-5)


def test_box_cells() -> None:
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [20.0, 4.0, 32.0, 9.0], [13.0, 13.0, 14.0, 14.0]])
    cells = box_cells(boxes, (8, 8), frame_size=32)  # 4-pixel cells, centres at 2, 6, 10, …
    assert torch.nonzero(cells[0].any(0)).flatten().tolist() == [0, 1, 2]  # columns
    assert torch.nonzero(cells[1].any(0)).flatten().tolist() == [5, 6, 7]
    assert torch.nonzero(cells[1].any(1)).flatten().tolist() == [1]  # rows 4-9: centre 6 only
    assert cells[2].sum() == 1 and cells[2, 3, 3], "a box smaller than a cell keeps the cell under its centre"
    assert box_cells(torch.full((1, 4), float("nan")), (4, 4), 64).all()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("separation")
    make_synth_shards(root, num_videos=36, size=48, split=(0.5, 0.1, 0.4))
    return root


def test_clips_are_read_once_in_the_manifests_order(tiny_set: Path) -> None:
    """Through the data module's stream: every clip of the split once, in order; training
    windows drawn (random window and flip, the same on every read), test windows centred;
    the in-memory cache of the recipe changes nothing."""
    data = DataConfig(shards=str(tiny_set / "shards"), video=VideoView(num_frames=1, fps=25.0, size=48),
                      audio=AudioView(seconds=1.0), batch_size=8, num_workers=0)
    count = ShardList.from_manifest(data.shards, "train").num_samples
    drawn = load_clips(data, "train", (BOXES,), train=True)
    centred = load_clips(data, "train", (), train=False)
    assert drawn.index.tolist() == centred.index.tolist() == list(range(count))
    assert torch.equal(drawn.label, centred.label) and centred.boxes is None and drawn.boxes.shape == (count, 4, 4)
    assert drawn.video.shape == (count, 3, 1, 48, 48) and drawn.audio.shape == (count, RATE)
    assert not torch.equal(drawn.audio, centred.audio), "training windows are drawn, not centred"
    again = load_clips(replace(data, cache="memory"), "train", (BOXES,), train=True, max_clips=5)
    assert torch.equal(again.audio, drawn.audio[:5]) and torch.equal(again.video, drawn.video[:5])
    torch.testing.assert_close(again.boxes, drawn.boxes[:5], rtol=0, atol=0, equal_nan=True)  # NaN: no box
    assert len(again) == 5


def test_report_is_the_printed_summary() -> None:
    scores = {"sdr_db": 5.123, "sir_db": 12.0, "sar_db": 7.5, "si_sdr_db": 4.25, "sdr_improvement_db": 5.0,
              "sdr_mixture_db": 0.125, "count": 63}
    results = {"mixtures": scores, "two_source_clips": {**{k: None for k in scores}, "count": 0},
               "seconds": {"total": 151.6}, "encoders": "runs/demo/avc/export",
               "metrics_file": "runs/separate/metrics.json",
               "splits": {"train": "train", "test": "test"}}
    lines = report(results).splitlines()
    assert lines[0] == ("separation with video encoder runs/demo/avc/export (split test; dB, means over sources then "
                        "mixtures):")
    assert lines[1].split() == ["scored", "set", "sdr", "sir", "sar", "si_sdr", "sdr_improvement", "sdr_mixture",
                                "count"]
    assert lines[2].split() == ["mixtures", "5.12", "12.00", "7.50", "4.25", "5.00", "0.12", "63"]
    assert lines[3].split() == ["two_source_clips", *["-"] * 6, "0"]
    assert lines[4] == "152 s; written: runs/separate/metrics.json, runs/separate/separation.png"
    assert len(lines) == 5


@pytest.mark.slow
def test_separate_verb_end_to_end(tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "sep"
    common = [f"data.shards={tiny_set / 'shards'}", "data.num_workers=0", "data.batch_size=8", "data.video.size=48",
              "model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]"]
    recipe = str(RECIPES / "eval" / "synth_separation.yaml")
    assert main(["separate", recipe, *common, "separation.bogus=1"]) == 2
    assert main(["separate", recipe, *common, "separation.mask=soft"]) == 2
    assert main(["separate", recipe, *common, f"run_dir={run_dir}", "separation.steps=3", "separation.batch_size=4",
                 "separation.unet_width=8", "separation.unet_levels=4", "separation.channels=8",
                 "separation.test_mixtures=4", "separation.eval_workers=0", "separation.figure_mixtures=2"]) == 0
    result = json.loads((run_dir / "metrics.json").read_text())
    assert "metrics_file" not in result and not list(run_dir.glob(".*.tmp"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "metrics.json", "separation.png"], \
        "the Trainer writes no logs or checkpoints"
    mixtures, clips = result["mixtures"], result["two_source_clips"]
    assert mixtures["count"] + mixtures["skipped_silent_reference"] + mixtures["skipped_silent_estimate"] == 4
    for key in ("sdr_db", "sir_db", "sar_db", "si_sdr_db", "sdr_improvement_db"):
        assert key in mixtures and key in clips
    assert (mixtures["sdr_db"] is None) == (mixtures["count"] == 0)
    # (b) covers every test clip with two sounding objects (from the generator's ground truth)
    labels = [line.split(",") for line in (tiny_set / "synth" / "labels.csv").read_text().splitlines()[1:]]
    two = 0
    for clip_id, _, split in labels:
        gt = json.loads((tiny_set / "synth" / "videos" / f"{clip_id}.gt.json").read_text())
        two += split.strip() == "test" and sum(o["sounding"] for o in gt["objects"]) == 2
    assert two > 0, "the tiny set should hold a two-source test clip"
    assert (clips["count"] + clips["skipped_silent_reference"] + clips["skipped_silent_estimate"]
            + clips["skipped_missing_box"]) == two
    assert result["train"]["steps"] == 3 and result["encoders"] == "random"
    assert (run_dir / "separation.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.startswith("separation with video encoder random (split test; dB")
    assert printed.endswith(f"written: {run_dir / 'metrics.json'}, {run_dir / 'separation.png'}\n")


def test_separate_a_set_without_boxes_or_stems(tiny_set: Path, tmp_path: Path) -> None:
    """MUSIC-like shards (videos and labels, no ground-truth sidecars): frame pooling and
    `two_source_clips: false` score the two-clip mixtures only."""
    import shutil

    videos = tmp_path / "videos"
    videos.mkdir()
    for mp4 in (tiny_set / "synth" / "videos").glob("*.mp4"):
        shutil.copy(mp4, videos / mp4.name)
    shards = tmp_path / "shards"
    assert main(["shards", "--videos", str(videos), "--labels", str(tiny_set / "synth" / "labels.csv"),
                 "--out", str(shards), "--short-side", "48"]) == 0
    run_dir = tmp_path / "sep"
    assert main(["separate", str(RECIPES / "eval" / "synth_separation.yaml"), f"data.shards={shards}",
                 "data.num_workers=0", "data.batch_size=8", "data.video.size=48", f"run_dir={run_dir}",
                 "model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]",
                 "separation.pooling=frame", "separation.two_source_clips=false", "separation.steps=2",
                 "separation.batch_size=4", "separation.unet_width=8", "separation.channels=8",
                 "separation.test_mixtures=4", "separation.eval_workers=0", "separation.figure_mixtures=1"]) == 0
    result = json.loads((run_dir / "metrics.json").read_text())
    assert "two_source_clips" not in result
    mixtures = result["mixtures"]
    assert mixtures["count"] + mixtures["skipped_silent_reference"] + mixtures["skipped_silent_estimate"] == 4


def test_complementary_masks_sum_to_one_and_swap_with_the_sources() -> None:
    cfg = SeparationConfig(unet_width=8, unet_levels=4, channels=8, log_bins=64)
    model = SeparationModel(small3d(widths=(8, 16)), cfg, frame_size=32).eval()
    mixture = (tone(220.0) + tone(700.0))[None] / 2
    _, magnitude, network_input = model.spectra(mixture)
    assert magnitude.shape == (1, 1, 64, 63) and network_input.shape == (1, 5, 64, 63)  # 5 harmonics
    visual = torch.rand(1, 2, 8)
    logits = model(network_input, visual)
    torch.testing.assert_close(torch.sigmoid(logits).sum(1), torch.ones(1, 64, 63))
    torch.testing.assert_close(model(network_input, visual.flip(1)), logits.flip(1))


def test_mask_sharpness_by_hand() -> None:
    logits = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    torch.testing.assert_close(predicted_masks(logits, "binary"), torch.sigmoid(logits))
    sharp = predicted_masks(logits, "binary", sharpness=2.0)
    torch.testing.assert_close(sharp, 1 / (1 + torch.exp(-2 * logits)))
    # two complementary sources (logits d and −d): p^2 / (p^2 + (1 − p)^2), still summing to 1
    p = torch.sigmoid(logits)
    torch.testing.assert_close(sharp, p**2 / (p**2 + (1 - p) ** 2))
    torch.testing.assert_close(sharp + predicted_masks(-logits, "binary", sharpness=2.0), torch.ones(4))
    assert sharp[1] == 0.5 and sharp[2] > p[2] and sharp[0] < p[0]  # undecided bins stay at ½, the rest lean further
    torch.testing.assert_close(predicted_masks(logits, "ratio", ratio_max=5.0), 5.0 * torch.sigmoid(logits))


@pytest.mark.parametrize("bad", [{"mask_sharpness": 0.0}, {"mask_sharpness": -1.0}, {"mask_sharpness": math.inf},
                                 {"mask": "ratio", "mask_sharpness": 2.0}])
def test_mask_sharpness_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="mask_sharpness"):
        SeparationConfig(**bad)


def test_score_sets_splits_one_pool_into_the_named_sets() -> None:
    """The sets share one pool of spawned processes; each summary is that of its own mixtures."""
    generator = torch.Generator().manual_seed(0)
    references = torch.randn(5, 2, 4000, generator=generator, dtype=torch.float64)
    mixtures = references.sum(1)
    estimates = references + 0.3 * torch.randn(references.shape, generator=generator, dtype=torch.float64)
    items = [(e.numpy(), r.numpy(), m.numpy()) for e, r, m in zip(estimates, references, mixtures)]
    silent = (items[0][0], 0 * items[0][1], items[0][2])
    sets = {"a": items[:3], "b": [*items[3:], silent], "empty": []}
    pooled = score_sets(sets, workers=2)
    assert list(pooled) == ["a", "b", "empty"]
    for name, set_items in sets.items():
        alone = score_sets({name: set_items}, workers=0)[name]
        assert pooled[name] == pytest.approx(alone)
    assert pooled["a"]["count"] == 3 and pooled["b"]["count"] == 2 and pooled["b"]["skipped_silent_reference"] == 1
    expected = sum(separation_metrics(*item)["sdr"] for item in items[:3]) / 3
    assert pooled["a"]["sdr_db"] == pytest.approx(expected)
    assert pooled["empty"] == {**{k: None for k in pooled["empty"] if k.endswith("_db")}, "count": 0,
                               "skipped_silent_reference": 0, "skipped_silent_estimate": 0}
