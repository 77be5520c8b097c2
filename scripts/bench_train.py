"""Training throughput: clips/s per device of each pretraining recipe's model, its FLOPs per
clip and, on a GPU with a known peak, the model FLOPs utilisation (MFU).

    python scripts/bench_train.py      # CPU: recipes/synth/*_small.yaml; GPU: recipes/pretrain/*/*.yaml
    python scripts/bench_train.py --recipes recipes/pretrain/avid_cma/kinetics400_r2plus1d18_8x32_8f112.yaml --batch 4
    python scripts/bench_train.py --recipes default --with-data runs/demo/shards --workers 2

(a) Model only: the recipe's task (``build_pretext_task``) at the recipe's input size, fed
one synthetic batch shaped like a finished batch (the batch contract of avssl/data/views.py:
a uint8 clip and waveforms of the recipe's windows, passed once through the recipe's
``BatchTransform``, then reused), a full optimiser step each iteration: ``training_step``
(forward and loss, under bf16 autocast on a GPU, fp32 on a CPU, as ``precision:
bf16-mixed`` / ``32-true`` do), backward, the recipe's optimiser step. Warm-up steps are
not timed. Not included: Lightning's loop, the online monitors (probe and kNN callbacks),
DDP's gradient all-reduce, the device-side batch transform.

(b) ``--with-data SHARDS``: the same steps with batches from the recipe's AVDataModule over
those shards (``--workers`` loader workers): transfer to the device and the device-side
``BatchTransform`` are timed too. Reported as clips/s and the ratio to (a). The loader's
prefetch queue (4 batches per worker) fills during warm-up, so use ``--steps`` well above
4 × workers for a steady-state figure.

FLOPs per clip: ``torch.utils.flop_counter.FlopCounterMode`` over one training step
(forward + backward: matrix products and convolutions; normalisation, pooling and
element-wise work are not counted, as is usual for MFU), divided by the batch size.
Achieved TFLOP/s = FLOPs per clip × clips/s. MFU = achieved / the device's dense bf16 peak
(PEAK_BF16_TFLOPS); omitted on a CPU, in fp32, and on a device not in the table.

Steady state of each method: AVTS with the recipe's hard-negative fraction (after its
curriculum starts: the shifted audio view goes through the audio encoder too), SeLaVi after
its first labelling (cross-entropy against labels, not the epoch-0 zero loss), AVID in its
AVID phase (CMA adds a second bank term, no encoder work). VATT and CAV-MAE drop or mask
tokens inside ``training_step`` (DropToken's half, CAV-MAE's 75 %), so their FLOPs per clip
are those of the kept tokens plus, for CAV-MAE, the decoder over every patch.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avssl.config import data_config, load_recipe, to_plain  # noqa: E402
from avssl.data.datamodule import AVDataModule, ShardList  # noqa: E402
from avssl.data.transforms import BatchTransform  # noqa: E402
from avssl.data.views import AUDIO, INDEX, LABEL, SKIPPED, VIDEO, ViewSpec  # noqa: E402
from avssl.pretrain import speed_up_encoders  # noqa: E402

CPU_RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes" / "synth").glob("*_small.yaml"))
GPU_RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes" / "pretrain").glob("*/*.yaml"))

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity), matched on
# torch.cuda.get_device_name(): first entry whose every word occurs in the name.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H200",), 989.4),
    (("H100", "PCIe"), 756.0),
    (("H100", "HBM3"), 989.4),  # "NVIDIA H100 80GB HBM3": the SXM part
    (("H100", "SXM"), 989.4),
    (("A100",), 312.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name; None when unknown (MFU is then omitted)."""
    for words, peak in PEAK_BF16_TFLOPS:
        if all(word.lower() in device_name.lower() for word in words):
            return peak
    return None


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs that ``step()`` runs (matrix products and convolutions, forward and backward),
    as counted by FlopCounterMode. A Conv2d forward counts 2·Cin·Cout·k²·Hout·Wout per sample;
    its backward the same again for the weight gradient, and again for the input gradient
    when the input needs one."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- building -------------------------------------------------------------------------------
def recipe_overrides(batch: int | None, size: int | None, frames: int | None, extra: Sequence[str]) -> list[str]:
    overrides = []
    if batch is not None:
        overrides.append(f"data.batch_size={batch}")
    if size is not None:
        overrides.append(f"data.video.size={size}")
    if frames is not None:
        overrides.append(f"data.video.num_frames={frames}")
    return overrides + list(extra)


def build_task(recipe: str, overrides: Sequence[str], num_instances: int) -> tuple[Any, Any]:
    """(task, resolved recipe). ``task.num_instances`` (memory and label banks) is set to
    ``num_instances`` when the recipe leaves it to the shards' manifest."""
    from avssl.tasks.pretext import build_pretext_task

    config = load_recipe(recipe, list(overrides))
    plain = to_plain(config)
    task_section = plain.setdefault("task", {})
    if task_section.get("name") in ("avid_cma", "avid", "selavi") and task_section.get("num_instances") is None:
        task_section["num_instances"] = num_instances
    return build_pretext_task(plain), config


def steady_state(task: Any) -> None:
    """Put a freshly built task in the state it spends most of its training in (see the
    module docstring)."""
    name = type(task).__name__
    if name == "AVTS":
        task.hard_fraction = task.task_config.hard_fraction
        task.super_hard_fraction = task.task_config.super_hard_fraction
    elif name == "SeLaVi" and task.task_config.variant == "offline":
        generator = torch.Generator().manual_seed(0)
        task.label_bank.labels.copy_(torch.randint(task.task_config.num_clusters, task.label_bank.labels.shape,
                                                   generator=generator))
        task.label_bank.labelings_done.fill_(1)


def make_optimizer(task: Any) -> torch.optim.Optimizer:
    """The recipe's optimiser (its learning-rate schedule needs a Trainer and costs nothing)."""
    scheduler = task.task_config.scheduler
    task.task_config.scheduler = "none"
    try:
        return task.configure_optimizers()
    finally:
        task.task_config.scheduler = scheduler


def synthetic_batch(spec: ViewSpec, transform: BatchTransform, batch_size: int, num_instances: int,
                    device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A finished training batch of the spec's windows: what the loader yields (uint8 clip,
    B×1×N waveforms), passed through the recipe's device-side transform."""
    generator = torch.Generator().manual_seed(seed)
    raw: dict[str, torch.Tensor] = {}
    if spec.video is not None:
        v = spec.video
        raw[VIDEO] = torch.randint(0, 256, (batch_size, 3, v.num_frames, v.size, v.size), dtype=torch.uint8,
                                   generator=generator)
    for name, view in spec.audio.items():
        samples = int(round(view.seconds * spec.mel.sample_rate))
        raw[name] = 0.1 * torch.randn(batch_size, 1, samples, generator=generator)
    raw[INDEX] = torch.randperm(max(num_instances, batch_size), generator=generator)[:batch_size]
    raw[LABEL] = torch.full((batch_size,), -1, dtype=torch.long)
    raw[SKIPPED] = torch.zeros(1, dtype=torch.long)
    raw = {k: t.to(device) for k, t in raw.items()}
    with torch.no_grad():
        return transform.to(device)(raw, train=True)


def input_shape(batch: dict[str, torch.Tensor]) -> str:
    """Per-clip shapes of the encoder inputs: video C×T×H×W, each audio view."""
    parts = [f"{key} " + "x".join(str(s) for s in batch[key].shape[1:])
             for key in batch if key == VIDEO or key == AUDIO or key.startswith(AUDIO + "_")]
    return ", ".join(parts)


def make_step(task: Any, optimizer: torch.optim.Optimizer, device: torch.device, bf16: bool
              ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.training_step(batch, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def timed(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


def loader_batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches epoch after epoch (the loader's workers persist)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def stop_workers(loader: DataLoader) -> None:
    """End a persistent-workers loader's processes now (the data module keeps a reference
    to the loader, so they would outlive the measurement and take CPU from the next one)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        iterator._shutdown_workers()
        loader._iterator = None


# -- one measurement ----------------------------------------------------------------------
@dataclass
class Result:
    recipe: str
    device: str
    precision: str
    batch: int
    input_shape: str
    gflops_per_clip: float
    clips_per_s: float
    step_ms: float
    tflops_per_s: float
    mfu: float | None
    peak_memory_gib: float | None = None
    data_clips_per_s: float | None = None
    data_ratio: float | None = None
    workers: int | None = None
    channels_last: bool = False
    compiled: bool = False


def measure(recipe: str, *, device: torch.device, overrides: Sequence[str] = (), steps: int = 10, warmup: int = 3,
            bf16: bool | None = None, channels_last: bool = False, compile: bool = False,
            with_data: str | None = None, workers: int = 2, num_instances: int = 16384,
            cudnn_benchmark: bool = False) -> Result:
    """Model-only throughput of one recipe (and, with ``with_data``, through the loader)."""
    warnings.filterwarnings("ignore", message=r".*self\.trainer. reference is not registered.*")
    warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
    bf16 = device.type == "cuda" if bf16 is None else bf16
    overrides = list(overrides)
    if with_data is not None:
        overrides += [f"data.shards={with_data}", f"data.num_workers={workers}"]
        num_instances = max(num_instances, ShardList.from_manifest(with_data, "train").num_samples)
    torch.manual_seed(0)
    task, config = build_task(recipe, overrides, num_instances)
    # Lightning leaves cuDNN's autotuner off unless the recipe sets trainer.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark or bool(config.trainer.get("benchmark", False))
    task.to(device).train()
    steady_state(task)
    spec = task.views()
    datamodule = AVDataModule(data_config(config), views=spec, eval_views=task.eval_views())
    batch_size = int(config.data.batch_size)
    batch = synthetic_batch(spec, BatchTransform(spec, datamodule.augment), batch_size,
                            int(getattr(task.task_config, "num_instances", None) or num_instances), device)
    # the recipe's model.channels_last / model.compile, or the flags: as avssl pretrain applies them
    channels_last = channels_last or bool(config.model.get("channels_last", False))
    compile = compile or bool(config.model.get("compile", False))
    speed_up_encoders(task, channels_last, False)
    optimizer = make_optimizer(task)
    step = make_step(task, optimizer, device, bf16)
    flops = count_flops(lambda: step(batch))  # one step, also the first warm-up step
    if compile:  # compiling takes the first steps (forward, then backward, per encoder)
        speed_up_encoders(task, False, True)
        warmup = max(warmup, 3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: step(batch), steps, warmup, device)
    clips_per_s = steps * batch_size / seconds
    name = device_name(device)
    tflops = flops / batch_size * clips_per_s / 1e12
    peak = peak_bf16_tflops(name) if device.type == "cuda" and bf16 else None
    result = Result(
        recipe=recipe, device=name, precision="bf16-autocast" if bf16 else "fp32", batch=batch_size,
        input_shape=input_shape(batch), gflops_per_clip=flops / batch_size / 1e9, clips_per_s=clips_per_s,
        step_ms=1000 * seconds / steps, tflops_per_s=tflops, mfu=tflops / peak if peak else None,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        channels_last=channels_last, compiled=compile,
    )
    if with_data is not None:
        transform = datamodule.train_transform.to(device)
        loader = datamodule.train_dataloader()
        batches = loader_batches(loader)

        def data_step() -> None:
            loaded = {k: t.to(device, non_blocking=True) for k, t in next(batches).items()}
            with torch.no_grad():
                finished = transform(loaded, train=True)
            step(finished)

        data_seconds = timed(data_step, steps, warmup, device)
        batches.close()
        stop_workers(loader)
        result.data_clips_per_s = steps * batch_size / data_seconds
        result.data_ratio = result.data_clips_per_s / clips_per_s
        result.workers = workers
    return result


# -- report ---------------------------------------------------------------------------------
def rate(clips_per_s: float) -> str:
    return f"{clips_per_s:.1f}" if clips_per_s >= 10 else f"{clips_per_s:.2f}"


def table(results: list[Result]) -> str:
    with_data = any(r.data_clips_per_s is not None for r in results)
    header = ["recipe", "device", "precision", "batch", "input (per clip)", "GFLOP/clip (fwd+bwd)", "clips/s",
              "ms/step", "TFLOP/s", "MFU"]
    if with_data:
        header += ["workers", "with data clips/s", "data / model"]
    rows = []
    for r in results:
        gflops = f"{r.gflops_per_clip:.3f}" if r.gflops_per_clip < 10 else f"{r.gflops_per_clip:.1f}"
        row = [Path(r.recipe).stem, r.device, r.precision + (", channels_last" if r.channels_last else "")
               + (", compiled" if r.compiled else ""), str(r.batch), r.input_shape, gflops,
               rate(r.clips_per_s), f"{r.step_ms:.0f}", f"{r.tflops_per_s:.3f}",
               "—" if r.mfu is None else f"{100 * r.mfu:.1f} %"]
        if with_data:
            row += ["—" if r.workers is None else str(r.workers),
                    "—" if r.data_clips_per_s is None else rate(r.data_clips_per_s),
                    "—" if r.data_ratio is None else f"{100 * r.data_ratio:.0f} %"]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=None,
                   help="recipe files ('default': the device's default set: recipes/synth/*_small.yaml on a CPU, "
                        "recipes/pretrain/*/*.yaml on a GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on a GPU, 10 on a CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on a GPU, 2 on a CPU)")
    p.add_argument("--batch", type=int, default=None, help="override data.batch_size (per device)")
    p.add_argument("--size", type=int, default=None, help="override data.video.size")
    p.add_argument("--frames", type=int, default=None, help="override data.video.num_frames")
    p.add_argument("--set", dest="extra", nargs="*", default=[], metavar="KEY=VALUE", help="further recipe overrides")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on a GPU (MFU is then omitted)")
    p.add_argument("--compile", action="store_true",
                   help="model.compile: torch.compile each encoder (FLOPs counted before; at least 3 warm-up steps)")
    p.add_argument("--channels-last", action="store_true",
                   help="model.channels_last: channels_last_3d weights and inputs for 3D convs (channels_last for 2D)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="trainer.benchmark: cuDNN picks the fastest convolution algorithms (GPU)")
    p.add_argument("--with-data", metavar="SHARDS", default=None,
                   help="also time the steps fed by the recipe's AVDataModule from these shards")
    p.add_argument("--workers", type=int, default=2, help="loader workers for --with-data")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of this process (default: torch's, one per core; "
                        "`avssl pretrain` on a 2-core CPU with 2 workers uses 1)")
    p.add_argument("--num-instances", type=int, default=16384,
                   help="bank slots for AVID/SeLaVi when the recipe leaves them to the manifest")
    p.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default = GPU_RECIPES if device.type == "cuda" else CPU_RECIPES
    recipes: list[str] = []
    for recipe in args.recipes or ["default"]:
        recipes += default if recipe == "default" else [recipe]
    steps = args.steps if args.steps is not None else (20 if device.type == "cuda" else 10)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 2)
    overrides = recipe_overrides(args.batch, args.size, args.frames, args.extra)
    if args.with_data and steps < 4 * args.workers * 2:
        print(f"note: {steps} steps with data: the loader's prefetched batches (4 per worker) fill during "
              f"warm-up and are a large share of them; use --steps ≥ {8 * args.workers} for a steady state",
              file=sys.stderr)
    results = []
    for recipe in recipes:
        print(f"{recipe}: {steps} steps after {warmup} warm-up …", file=sys.stderr, flush=True)
        results.append(measure(recipe, device=device, overrides=overrides, steps=steps, warmup=warmup,
                               bf16=False if args.fp32 else None, channels_last=args.channels_last,
                               compile=args.compile, with_data=args.with_data, workers=args.workers,
                               num_instances=args.num_instances, cudnn_benchmark=args.cudnn_benchmark))
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    main()
