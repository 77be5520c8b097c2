"""Look at the synthetic audio-visual set, and measure how hard it is.

    python scripts/plot_synthetic.py                 # figures → docs/img/synthetic_*.png
    python scripts/plot_synthetic.py --probe 800     # random-init probe table (docs/synthetic.md)

Figures: frames of a few clips with the ground-truth boxes of the sounding objects (the
main one green, the second one cyan, the silent distractor dashed red; a yellow frame
marks a note onset), and the log-mel spectrogram of each clip's mix with its onsets.

The probe renders clips with ``render_clip`` (no encoding), takes the middle frame and the
middle second of audio (log-mel, 64 bands, 25 ms window, 10 ms hop), pushes them through
a randomly initialised 4-layer conv net (32-64-128-128 channels, BN, ReLU, global average
pool, ``torch.manual_seed(0)``), and fits a logistic regression on the first 600 clips
(L2 weight chosen on the last 100 of those) to report top-1 on the other 200. The same
probe on a colour histogram and on the pitch of the main object's notes shows that colour
and pitch do not give the category away.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avssl.data.synth import SynthConfig, render_clip  # noqa: E402

MEL = dict(n_fft=512, n_mels=64)


def _log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate, win_length=int(0.025 * sample_rate), hop_length=int(0.01 * sample_rate), **MEL)
    return torch.log(mel(torch.as_tensor(audio)) + 1e-6).numpy()


# ----------------------------------------------------------------------------- figures


def plot(out_dir: Path, clips: list[int], cfg: SynthConfig, columns: int = 5) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = [render_clip(i, cfg) for i in clips]

    fig, axes = plt.subplots(len(clips), columns, figsize=(1.6 * columns, 1.75 * len(clips)), squeeze=False)
    for row, clip in zip(axes, rendered):
        gt = clip.ground_truth
        onset_frames = {round(s * cfg.fps) for o in gt["objects"] for s in o["onsets"]}
        # evenly spaced frames, each moved onto a nearby onset where there is one
        picks = []
        for t in np.linspace(0, cfg.num_frames - 1, columns).astype(int):
            near = [f for f in onset_frames if abs(f - t) <= 3 and f not in picks]
            picks.append(min(near, key=lambda f: abs(f - t)) if near else int(t))
        for ax, t in zip(row, picks):
            ax.imshow(clip.frames[t], interpolation="nearest")
            for obj in gt["objects"]:
                x0, y0, x1, y1 = obj["boxes"][t]
                style = {0: ("lime", "-"), 1: ("cyan", "-")}.get(obj["stem_channel"], ("red", "--"))
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=style[0], linestyle=style[1], linewidth=1.0))
            if t in onset_frames:
                for spine in ax.spines.values():
                    spine.set_edgecolor("gold")
                    spine.set_linewidth(3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{t / cfg.fps:.2f} s" + (" onset" if t in onset_frames else ""), fontsize=7)
        row[0].set_ylabel(f"{gt['id']}\n{gt['label']}", fontsize=6)
    fig.tight_layout()
    frames_png = out_dir / "synthetic_frames.png"
    fig.savefig(frames_png, dpi=64)
    plt.close(fig)

    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 1.6 * len(clips)), squeeze=False)
    for ax, clip in zip(axes[:, 0], rendered):
        gt = clip.ground_truth
        mel = _log_mel(clip.mix, cfg.sample_rate)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                  extent=(0, cfg.seconds, 0, mel.shape[0]))
        for obj in gt["objects"]:
            if obj["sounding"]:
                colour = "lime" if obj["stem_channel"] == 0 else "cyan"
                for s in obj["onsets"]:
                    ax.axvline(s, color=colour, linewidth=1.0, ymax=0.12)
        names = [f"{o['category']} ({'main' if o['stem_channel'] == 0 else 'second' if o['sounding'] else 'silent'})"
                 for o in gt["objects"]]
        off = sum(1 for n in clip.notes if n["object"] < 0)
        ax.set_title(f"{gt['id']}: " + ", ".join(names) + (f", {off} off-screen notes" if off else ""), fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds (ticks: onsets, green main, cyan second)", fontsize=7)
    fig.tight_layout()
    mel_png = out_dir / "synthetic_logmel.png"
    fig.savefig(mel_png, dpi=64)
    plt.close(fig)
    return [frames_png, mel_png]


# ----------------------------------------------------------------------------- probe


def _probe_inputs(task: tuple[int, SynthConfig]) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    index, cfg = task
    clip = render_clip(index, cfg)
    start = cfg.num_samples // 2 - cfg.sample_rate // 2
    f0 = np.log([n["f0_hz"] for n in clip.notes if n["object"] == 0])
    label = clip.ground_truth["categories"].index(clip.label)
    return clip.frames[cfg.num_frames // 2], clip.mix[start : start + cfg.sample_rate], label, f0.mean(), f0.std()


def _random_cnn(in_channels: int):
    import torch

    torch.manual_seed(0)
    layers, channels = [], in_channels
    for i, width in enumerate((32, 64, 128, 128)):
        layers += [torch.nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1),
                   torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def _logistic_regression(x_train, y_train, x_test, num_classes: int, l2: float):
    import torch

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], num_classes)
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_train), y_train) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return linear(x_test).argmax(1)


def _linear_probe(features, labels, num_classes: int, num_train: int) -> tuple[float, float]:
    import torch

    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels)
    x_train, y_train, x_test, y_test = x[:num_train], y[:num_train], x[num_train:], y[num_train:]

    def held_out(l2: float) -> float:  # L2 chosen on the last 100 training clips, never on test
        return (_logistic_regression(x_train[:-100], y_train[:-100], x_train[-100:], num_classes, l2)
                == y_train[-100:]).float().mean().item()

    l2 = max((1e-4, 1e-3, 1e-2, 1e-1), key=held_out)
    accuracy = (_logistic_regression(x_train, y_train, x_test, num_classes, l2) == y_test).float().mean().item()
    return accuracy, l2


def probe(num_clips: int, cfg: SynthConfig, num_train: int, workers: int) -> dict[str, float]:
    import torch

    start = time.perf_counter()
    tasks = [(i, cfg) for i in range(num_clips)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_probe_inputs, tasks, chunksize=16)
    else:
        rows = [_probe_inputs(t) for t in tasks]
    order = np.random.default_rng(0).permutation(num_clips)  # labels follow the index: shuffle
    rows = [rows[i] for i in order]
    frames = np.stack([r[0] for r in rows])
    labels = np.array([r[2] for r in rows])
    print(f"rendered {num_clips} clips in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    with torch.no_grad():
        video = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255 - 0.5
        video_features = torch.cat([_random_cnn(3)(b) for b in video.split(100)])
        mel = torch.as_tensor(_log_mel(np.stack([r[1] for r in rows]), cfg.sample_rate))
        mel = ((mel - mel.mean()) / mel.std())[:, None]
        audio_features = torch.cat([_random_cnn(1)(b) for b in mel.split(100)])
    bins = (frames // 64).reshape(num_clips, -1, 3).astype(np.int64)
    histogram = np.stack([np.bincount(b[:, 0] * 16 + b[:, 1] * 4 + b[:, 2], minlength=64) for b in bins])
    features = {
        "video: random-init CNN, middle frame": video_features,
        "audio: random-init CNN, 1 s log-mel": audio_features,
        "video: colour histogram 4x4x4, middle frame": histogram / histogram.sum(1, keepdims=True),
        "audio: mean and std of the main object's log f0 (ground truth)": np.array([[r[3], r[4]] for r in rows]),
        "audio: time-averaged log-mel spectrum (64 values)": mel[:, 0].mean(-1),
    }
    results = {}
    print(f"| features ({num_train} train / {num_clips - num_train} test clips, "
          f"chance {100 / cfg.num_categories:.1f} %) | top-1 | L2 |\n|---|---|---|")
    for name, x in features.items():
        accuracy, l2 = _linear_probe(x, labels, cfg.num_categories, num_train)
        results[name] = accuracy
        print(f"| {name} | {100 * accuracy:.1f} % | {l2:g} |", flush=True)
    return results


def _one_of_each_kind(cfg: SynthConfig) -> list[int]:
    """A clip with one sounding object, one with two, one with a silent distractor and one
    with off-screen notes, of four different categories."""
    wanted = ["single", "two sounding", "silent distractor", "off-screen notes"]
    found: dict[str, int] = {}
    labels: set[str] = set()
    for index in range(200):
        clip = render_clip(index, cfg)
        objects = clip.ground_truth["objects"]
        sounding = sum(o["sounding"] for o in objects)
        offscreen = any(n["object"] < 0 for n in clip.notes)
        kind = ("two sounding" if sounding == 2 else "silent distractor" if len(objects) > sounding
                else "off-screen notes" if offscreen else "single")
        if kind not in found and clip.label not in labels:
            found[kind] = index
            labels.add(clip.label)
        if len(found) == len(wanted):
            break
    return [found[k] for k in wanted if k in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    parser.add_argument("--clips", type=int, nargs="+", default=None,
                        help="clip indices to draw (default: one of each kind of scene)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=0, metavar="N",
                        help="instead of plotting, run the random-init probe on N clips")
    parser.add_argument("--train", type=int, default=600, help="probe clips used for training")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = SynthConfig(seed=args.seed)
    if args.probe:
        probe(args.probe, cfg, args.train, args.workers)
        return
    for path in plot(args.out, args.clips or _one_of_each_kind(cfg), cfg):
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
