"""Encoders, registry and heads: shapes, pooling, determinism, errors, frozen classifiers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from avssl.models import (
    AUDIO_ENCODERS,
    MLP,
    VIDEO_ENCODERS,
    build_audio_encoder,
    build_encoders,
    build_video_encoder,
)

VIDEO_INPUT = (2, 3, 4, 32, 32)
TORCHVISION_VIDEO_INPUT = (2, 3, 2, 32, 32)  # the ResNet-18s are slow on a shared CPU
AUDIO_INPUT = (2, 1, 64, 48)  # F×T log-mel
WAVEFORM_INPUT = (2, 1, 1024)  # the waveform transformers' B×1×N
# feature map (C, T', H', W') for VIDEO_INPUT (small3d) or TORCHVISION_VIDEO_INPUT;
# (C, F', T') for AUDIO_INPUT
VIDEO_MAPS = {
    "r2plus1d_18": (512, 1, 2, 2),
    "r3d_18": (512, 1, 2, 2),
    "mc3_18": (512, 2, 2, 2),  # MC3's later groups are spatial-only: no temporal stride
    "small3d": (128, 1, 2, 2),
    "vit_tiny": (64, 4, 4, 4),  # patches 1×8×8
    "vit_small": (384, 2, 2, 2),  # 2×16×16
    "vit_base": (768, 1, 2, 2),  # 4×16×16
}
AUDIO_MAPS = {
    "avid_conv2d": (512, 4, 3),  # 64×48 → stem /2 → three stride-2 blocks → 4×3
    "resnet18": (512, 2, 2),
    "small2d": (128, 4, 3),
    "ast_tiny": (64, 8, 4),  # patches 8×10
    "ast_small": (384, 4, 3),  # 16×16
    "ast_base": (768, 4, 3),
    "wat_tiny": (64, 1, 8),  # 128-sample patches of WAVEFORM_INPUT
    "wat_base": (768, 1, 8),
}
DEFAULT_POOLING = {"r2plus1d_18": "avg", "r3d_18": "avg", "mc3_18": "avg", "small3d": "avg",
                   "avid_conv2d": "max", "resnet18": "avg", "small2d": "avg",
                   **dict.fromkeys(["vit_tiny", "vit_small", "vit_base", "ast_tiny", "ast_small", "ast_base",
                                    "wat_tiny", "wat_base"], "avg")}
TORCHVISION_VIDEO = {
    "r2plus1d_18": torchvision.models.video.r2plus1d_18,
    "r3d_18": torchvision.models.video.r3d_18,
    "mc3_18": torchvision.models.video.mc3_18,
}


def _build(name: str, **kwargs):
    if name in TORCHVISION_VIDEO:
        return build_video_encoder(name, **kwargs), torch.randn(TORCHVISION_VIDEO_INPUT)
    if name in VIDEO_ENCODERS:
        return build_video_encoder(name, **kwargs), torch.randn(VIDEO_INPUT)
    if name.startswith("wat_"):
        return build_audio_encoder(name, **kwargs), torch.randn(WAVEFORM_INPUT)
    return build_audio_encoder(name, **kwargs), torch.randn(AUDIO_INPUT)


def _reference_pool(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    dims = tuple(range(2, fmap.dim()))
    return fmap.mean(dim=dims) if pooling == "avg" else fmap.amax(dim=dims)


def test_registry_lists_every_encoder():
    assert set(VIDEO_ENCODERS) == set(VIDEO_MAPS)
    assert set(AUDIO_ENCODERS) == set(AUDIO_MAPS)


@pytest.mark.parametrize("name", list(VIDEO_MAPS) + list(AUDIO_MAPS))
def test_shapes_and_forward_is_pooled_feature_map(name):
    torch.manual_seed(0)
    encoder, x = _build(name)
    encoder.eval()
    expected_map = VIDEO_MAPS.get(name) or AUDIO_MAPS[name]
    with torch.no_grad():
        fmap = encoder.feature_map(x)
        out = encoder(x)
    assert isinstance(encoder.embedding_dim, int)
    assert encoder.embedding_dim == expected_map[0]
    assert tuple(fmap.shape) == (x.shape[0], *expected_map)
    assert tuple(out.shape) == (x.shape[0], encoder.embedding_dim)
    assert encoder.pooling == DEFAULT_POOLING[name]
    torch.testing.assert_close(out, encoder.pool(fmap), rtol=0, atol=0)
    torch.testing.assert_close(out, _reference_pool(fmap, DEFAULT_POOLING[name]))


@pytest.mark.parametrize("name", ["small3d", "avid_conv2d", "mc3_18"])
def test_pooling_is_configurable(name):
    outs = {}
    for pooling in ("avg", "max"):
        torch.manual_seed(0)
        encoder, x = _build(name, pooling=pooling)
        encoder.eval()
        torch.manual_seed(1)
        x = torch.randn(x.shape)
        with torch.no_grad():
            fmap = encoder.feature_map(x)
            outs[pooling] = encoder(x)
        torch.testing.assert_close(outs[pooling], _reference_pool(fmap, pooling))
    assert not torch.allclose(outs["avg"], outs["max"])
    with pytest.raises(ValueError, match="pooling"):
        _build(name, pooling="median")


def test_small3d_takes_single_frames():
    encoder = build_video_encoder("small3d").eval()
    x = torch.randn(2, 3, 1, 32, 32)
    with torch.no_grad():
        fmap = encoder.feature_map(x)
        out = encoder(x)
    assert tuple(fmap.shape) == (2, 128, 1, 2, 2)
    assert tuple(out.shape) == (2, 128)
    assert torch.isfinite(out).all()


def test_small_encoders_widths_are_configurable():
    video = build_video_encoder("small3d", widths=[4, 8], temporal_strides=[2, 2]).eval()
    audio = build_audio_encoder("small2d", widths=[4, 8, 12]).eval()
    assert video.embedding_dim == 8 and audio.embedding_dim == 12
    with torch.no_grad():
        assert tuple(video.feature_map(torch.randn(1, 3, 4, 32, 32)).shape) == (1, 8, 1, 8, 8)
        assert tuple(audio.feature_map(torch.randn(1, 1, 64, 48)).shape) == (1, 12, 8, 6)
    with pytest.raises(ValueError, match="temporal_strides"):
        build_video_encoder("small3d", widths=[4, 8], temporal_strides=[2])


def test_small3d_spatial_strides_keep_a_finer_map() -> None:
    """spatial_strides=[2, 2, 2, 1]: an 8×8 last map at 64 px instead of 4×4, on both the
    single-frame (2D) path and the 3D path, with the same weights and embedding size."""
    coarse = build_video_encoder("small3d", widths=[4, 8, 8, 8]).eval()
    fine = build_video_encoder("small3d", widths=[4, 8, 8, 8], spatial_strides=[2, 2, 2, 1]).eval()
    fine.load_state_dict(coarse.state_dict())
    with torch.no_grad():
        assert tuple(coarse.feature_map(torch.randn(1, 3, 1, 64, 64)).shape) == (1, 8, 1, 4, 4)
        assert tuple(fine.feature_map(torch.randn(1, 3, 1, 64, 64)).shape) == (1, 8, 1, 8, 8)
        assert tuple(fine.feature_map(torch.randn(1, 3, 4, 64, 64)).shape) == (1, 8, 1, 8, 8)
        frame = torch.randn(1, 3, 1, 64, 64)  # the single-frame path is the 3D conv's middle slice
        torch.testing.assert_close(fine.feature_map(frame), fine.blocks(frame))
    with pytest.raises(ValueError, match="spatial_strides"):
        build_video_encoder("small3d", widths=[4, 8], spatial_strides=[2, 3])


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_small_encoders_depth_adds_stride_one_layers(modality: str) -> None:
    """depth=2: two conv-BN-ReLU layers per width, the stride only in the first, so the
    feature map has the depth-1 net's shape."""
    build = build_video_encoder if modality == "video" else build_audio_encoder
    name, x = (("small3d", torch.randn(2, 3, 2, 32, 32)) if modality == "video"
               else ("small2d", torch.randn(2, 1, 32, 40)))
    shallow, deep = build(name, widths=[4, 8]).eval(), build(name, widths=[4, 8], depth=2).eval()
    convs = [m for m in deep.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(x.shape[1], 4), (4, 4), (4, 8), (8, 8)]
    assert [c.stride[-1] for c in convs] == [2, 1, 2, 1]
    with torch.no_grad():
        assert deep.feature_map(x).shape == shallow.feature_map(x).shape
    with pytest.raises(ValueError, match="depth"):
        build(name, depth=0)


@pytest.mark.parametrize("name", list(VIDEO_MAPS) + list(AUDIO_MAPS))
def test_same_seed_same_encoder(name):
    torch.manual_seed(123)
    a, x = _build(name)
    torch.manual_seed(123)
    b, _ = _build(name)
    torch.manual_seed(124)
    c, _ = _build(name)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    if name not in TORCHVISION_VIDEO:  # equal weights: the forward check only costs time there
        with torch.no_grad():
            torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_unknown_names_and_kwargs():
    with pytest.raises(ValueError) as info:
        build_video_encoder("resnet50_3d")
    assert "resnet50_3d" in str(info.value)
    assert all(name in str(info.value) for name in VIDEO_ENCODERS)
    with pytest.raises(ValueError) as info:
        build_audio_encoder("small3d")  # a video encoder is not an audio encoder
    assert all(name in str(info.value) for name in AUDIO_ENCODERS)
    with pytest.raises(TypeError, match="widht"):
        build_video_encoder("small3d", widht=[8])
    with pytest.raises(TypeError, match="num_classes"):
        build_video_encoder("r2plus1d_18", num_classes=10)
    with pytest.raises(TypeError, match="in_chans"):
        build_audio_encoder("avid_conv2d", in_chans=2)


def test_bad_input_layout_is_a_clear_error():
    video = build_video_encoder("small3d")
    audio = build_audio_encoder("small2d")
    with pytest.raises(ValueError, match=r"B×3×T×H×W.*\(2, 1, 4, 32, 32\)"):
        video(torch.randn(2, 1, 4, 32, 32))
    with pytest.raises(ValueError, match="B×1×F×T"):
        audio(torch.randn(2, 64, 48))


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18", "mc3_18", "resnet18"])
def test_torchvision_classifier_is_frozen_and_unused(name):
    torch.manual_seed(0)
    encoder, _ = _build(name)
    x = torch.randn((2, 3, 2, 16, 16) if name in TORCHVISION_VIDEO else (2, 1, 32, 32))
    fc = encoder.backbone.fc
    assert not fc.weight.requires_grad and not fc.bias.requires_grad
    encoder.requires_grad_(True)  # e.g. a fine-tuning task unfreezing everything
    assert not fc.weight.requires_grad and not fc.bias.requires_grad

    encoder.train()
    encoder(x).square().mean().backward()
    trainable = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    assert set(trainable) == {n for n, _ in encoder.named_parameters()} - {"backbone.fc.weight", "backbone.fc.bias"}
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert fc.weight.grad is None and fc.bias.grad is None

    encoder.eval()
    with torch.no_grad():
        before = encoder(x)
        fc.weight.add_(1.0)
        assert torch.equal(before, encoder(x))  # the classifier takes no part in forward


@pytest.mark.parametrize("name", list(TORCHVISION_VIDEO))
def test_video_backbone_state_dict_loads_into_torchvision(name):
    encoder = build_video_encoder(name).eval()
    reference = TORCHVISION_VIDEO[name]()
    reference.load_state_dict(encoder.backbone.state_dict(), strict=True)
    reference.fc = nn.Identity()
    x = torch.randn(1, 3, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), reference.eval()(x))


def test_audio_resnet18_loads_into_torchvision_with_one_channel_conv1():
    encoder = build_audio_encoder("resnet18").eval()
    reference = torchvision.models.resnet18()
    reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    reference.load_state_dict(encoder.backbone.state_dict(), strict=True)
    reference.fc = nn.Identity()
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), reference.eval()(x))


def test_avid_conv2d_layout():
    encoder = build_audio_encoder("avid_conv2d")
    stem_conv = encoder.stem[0]
    assert stem_conv.kernel_size == (7, 7) and stem_conv.stride == (2, 2) and stem_conv.in_channels == 1
    blocks = [encoder.block1, encoder.block2, encoder.block3, encoder.block4]
    assert [b.conv2.out_channels for b in blocks] == [64, 128, 256, 512]
    assert [b.conv1.stride for b in blocks] == [(2, 2), (2, 2), (2, 2), (1, 1)]
    # ten weight layers of the main path: the stem + two convs per block (+ a linear head in AVID)
    main_convs = [encoder.stem[0]] + [c for b in blocks for c in (b.conv1, b.conv2)]
    assert len(main_convs) == 9


def test_build_encoders_from_model_config():
    config = {"video_encoder": {"name": "small3d", "widths": [4, 8]}, "audio_encoder": None}
    video, audio = build_encoders(config)
    assert video.embedding_dim == 8 and audio is None
    built = build_encoders(OmegaConf.create({"video_encoder": None,
                                             "audio_encoder": {"name": "small2d", "widths": [4, 6]}}))
    assert built.video_encoder is None and built.audio_encoder.embedding_dim == 6
    assert build_encoders({}) == (None, None)
    with pytest.raises(ValueError, match="name"):
        build_encoders({"video_encoder": {"widths": [4]}})
    with pytest.raises(ValueError, match="known video encoders"):
        build_encoders({"video_encoder": {"name": "vit"}})


def test_mlp_head():
    torch.manual_seed(0)
    head = MLP([512, 512, 128])
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    out = head(torch.randn(8, 512))
    assert out.shape == (8, 128) and (out < 0).any()  # no activation after the last layer

    head = MLP([16, 32, 8], batchnorm=True, last_activation=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == 2
    out = head(torch.randn(4, 16))
    assert out.shape == (4, 8) and (out >= 0).all()

    with pytest.raises(ValueError):
        MLP([128])


def test_small3d_single_frame_path_equals_the_3d_convolutions() -> None:
    """The 2D shortcut for T=1 gives the 3D stack's outputs and gradients (train and eval BN)."""
    from avssl.models.video import small3d

    torch.manual_seed(0)
    fast = small3d(widths=(8, 16, 16), temporal_strides=(1, 2, 2), depth=2)
    slow = small3d(widths=(8, 16, 16), temporal_strides=(1, 2, 2), depth=2)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 1, 32, 32)
    for train in (True, False):
        fast.train(train), slow.train(train)
        out_fast = fast(x)
        out_slow = slow.pool(slow.blocks(x))  # the generic 3D path
        torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
        if train:
            out_fast.pow(2).sum().backward()
            out_slow.pow(2).sum().backward()
            for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(fast.buffers(), slow.buffers()):  # BN running statistics updated alike
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("modality,shape", [("video", (2, 3, 2, 32, 32)), ("audio", (2, 1, 32, 40))])
def test_channels_last_gives_the_same_embeddings_and_state(modality: str, shape: tuple[int, ...]) -> None:
    from avssl.models.registry import build_audio_encoder, build_video_encoder

    torch.manual_seed(0)
    build = build_video_encoder if modality == "video" else build_audio_encoder
    plain = build("small3d" if modality == "video" else "small2d").eval()
    fast = build("small3d" if modality == "video" else "small2d").eval()
    fast.load_state_dict(plain.state_dict())
    fast.use_channels_last()
    expected_format = torch.channels_last_3d if modality == "video" else torch.channels_last
    convs = [p for p in fast.parameters() if p.dim() == len(shape)]
    assert all(conv.is_contiguous(memory_format=expected_format) for conv in convs)
    assert all(conv.stride(1) == 1 for conv in convs)  # written out even for one input channel (the audio's first conv)
    x = torch.randn(shape)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.state_dict(), plain.state_dict())


@pytest.mark.parametrize("modality,shape", [("video", (4, 3, 1, 32, 32)), ("audio", (4, 1, 32, 40))])
def test_channels_last_training_keeps_every_gradient_channels_last(modality: str, shape: tuple[int, ...]) -> None:
    """With ``use_channels_last`` on the CPU recipes' inputs (one frame; one-channel log-mel),
    each conv-BN-ReLU output and the gradient that reaches it share the channels-last layout
    (the last block excepted: its gradient comes from the global pool). A mismatch makes
    every ReLU and BatchNorm backward read one of them strided, the slowest part of a step."""
    from avssl.models.registry import build_audio_encoder, build_video_encoder

    torch.manual_seed(0)
    build = build_video_encoder if modality == "video" else build_audio_encoder
    encoder = build("small3d" if modality == "video" else "small2d", widths=(8, 16, 16), depth=2).train()
    encoder.use_channels_last()
    layout = torch.channels_last_3d if modality == "video" else torch.channels_last
    seen: list[tuple[bool, bool]] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        index = len(seen)
        seen.append((output.is_contiguous(memory_format=layout) and not output.is_contiguous(), False))
        output.register_hook(lambda grad: seen.__setitem__(
            index, (seen[index][0], grad.is_contiguous(memory_format=layout) and not grad.is_contiguous())))

    for block in encoder.blocks:
        block[2].register_forward_hook(record)
    encoder(torch.randn(shape)).pow(2).sum().backward()
    assert len(seen) == 6
    assert seen[:-1] == [(True, True)] * 5
