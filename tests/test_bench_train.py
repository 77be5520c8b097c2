"""scripts/bench_train.py: the FLOP count against a hand count, and a 2-step CPU measurement."""
from __future__ import annotations

import torch

from tests.conftest import load_script


def test_flop_count_and_model_only_measurement():
    bench = load_script("bench_train")

    # One Conv2d, input without gradient: forward 2·Cin·Cout·k²·Hout·Wout per sample, its
    # backward the same again (weight gradient only); the bias is not counted.
    batch, cin, cout, k, size = 2, 3, 8, 3, 10
    conv = torch.nn.Conv2d(cin, cout, k)
    x = torch.randn(batch, cin, size, size)
    forward = 2 * cin * cout * k * k * (size - k + 1) ** 2 * batch
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 2 * forward
    x.requires_grad_(True)  # … and again for the input gradient
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 3 * forward

    assert bench.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_bf16_tflops("Tesla T4") is None

    result = bench.measure("recipes/synth/avc_small.yaml", device=torch.device("cpu"),
                           overrides=["data.batch_size=8"], steps=2, warmup=0)
    assert result.batch == 8 and result.precision == "fp32"
    assert result.input_shape == "video 3x1x64x64, audio 1x64x101"
    assert result.gflops_per_clip > 0 and result.clips_per_s > 0
    assert result.mfu is None  # no peak for a CPU
    # the encoders' forward alone, once per clip, is a lower bound of forward + backward
    task, _ = bench.build_task("recipes/synth/avc_small.yaml", ["data.batch_size=8"], 64)
    with torch.no_grad():
        forward_only = bench.count_flops(lambda: (task.video_encoder(torch.randn(1, 3, 1, 64, 64)),
                                                  task.audio_encoder(torch.randn(1, 1, 64, 101))))
    assert 2 * forward_only <= result.gflops_per_clip * 1e9 <= 3.2 * forward_only


def test_transformer_recipes_count_the_tokens_they_keep():
    """VATT's DropToken and CAV-MAE's masking happen inside training_step, so the FLOPs per
    clip are those of the tokens kept: half the tokens cost less than half the encoders' work
    plus the conv stem (not dropped), more than a quarter (attention is quadratic in tokens)."""
    bench = load_script("bench_train")
    flops = {rate: bench.measure("recipes/synth/vatt_small.yaml", device=torch.device("cpu"),
                                 overrides=["data.batch_size=4", f"task.drop_token_rate={rate}"],
                                 steps=1, warmup=0).gflops_per_clip
             for rate in (0.0, 0.5)}
    assert 0.4 < flops[0.5] / flops[0.0] < 0.6
    masked = bench.measure("recipes/synth/cav_mae_small.yaml", device=torch.device("cpu"),
                           overrides=["data.batch_size=4"], steps=1, warmup=0)
    assert masked.input_shape == "video 3x1x64x64, audio 1x64x101" and masked.gflops_per_clip > 0
