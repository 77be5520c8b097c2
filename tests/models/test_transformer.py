"""Transformer pieces and ViT encoders: sin-cos codes and patch order by hand, token ↔ patch
bookkeeping, attention against the textbook formula, the Encoder contract, export round trip."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import avssl
from avssl.export import export_checkpoint
from avssl.losses.masking import random_masking
from avssl.models import build_audio_encoder, build_video_encoder
from avssl.models.transformer import (
    Attention,
    PatchEmbed,
    patchify,
    sincos_position_embedding,
    unpatchify,
)
from avssl.models.vit import VisionTransformer, initialise_from_vit, read_state_dict


# -- sin-cos position embedding ------------------------------------------------------------------
def test_sincos_1d_by_hand():
    # dim 4 on a 1-D grid: frequencies 1/10000^(0/2) = 1 and 1/10000^(1/2) = 0.01
    emb = sincos_position_embedding(4, (3,))
    assert emb.shape == (3, 4) and emb.dtype == torch.float32
    expected = torch.tensor([math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    torch.testing.assert_close(emb[2], expected)
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_sincos_grid_axes_are_row_major_and_split_the_width():
    emb = sincos_position_embedding(4, (2, 3))  # two parts of width 2: (sin, cos) of the column, then of the row
    assert emb.shape == (6, 4)
    row, col = 1, 2
    expected = torch.tensor([math.sin(col), math.cos(col), math.sin(row), math.cos(row)])
    torch.testing.assert_close(emb[row * 3 + col], expected)
    # 8 over 3 axes: shares 4, 2, 2 (w, h, t); ω = 1, 1/100 for the 4-wide share
    emb = sincos_position_embedding(8, (2, 2, 3))
    t, h, w = 1, 1, 2
    expected = [math.sin(w), math.sin(w / 100), math.cos(w), math.cos(w / 100),
                math.sin(h), math.cos(h), math.sin(t), math.cos(t)]
    torch.testing.assert_close(emb[t * 6 + h * 3 + w], torch.tensor(expected))
    with pytest.raises(ValueError, match="even width of at least 6, got 7"):
        sincos_position_embedding(7, (1, 2, 2))


# -- patches ---------------------------------------------------------------------------------------
def test_patchify_order_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(x, (2, 2))
    assert patches.shape == (1, 4, 4)
    assert patches[0, 0].tolist() == [0, 1, 4, 5]
    assert patches[0, 1].tolist() == [2, 3, 6, 7]
    assert patches[0, 2].tolist() == [8, 9, 12, 13]
    two = torch.cat([x, x + 100], dim=1)  # channels last inside a patch: (p, q, C)
    assert patchify(two, (2, 2))[0, 0].tolist() == [0, 100, 1, 101, 4, 104, 5, 105]


@pytest.mark.parametrize("shape,patch", [((2, 3, 4, 8, 12), (2, 4, 4)), ((2, 1, 16, 20), (8, 10)), ((2, 1, 64), (16,))])
def test_unpatchify_restores_the_input(shape, patch):
    x = torch.randn(shape)
    grid = [s // p for s, p in zip(shape[2:], patch)]
    torch.testing.assert_close(unpatchify(patchify(x, patch), grid, patch), x, rtol=0, atol=0)


def test_patchify_drops_what_fills_no_whole_patch():
    x = torch.randn(1, 1, 17, 23)
    patches = patchify(x, (8, 10))
    assert patches.shape == (1, 4, 80)
    torch.testing.assert_close(unpatchify(patches, (2, 2), (8, 10)), x[..., :16, :20], rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not fill a grid"):
        unpatchify(patches, (2, 3), (8, 10))


@pytest.mark.parametrize("shape,patch", [((2, 3, 4, 8, 12), (2, 4, 4)), ((2, 1, 17, 23), (8, 10)),
                                         ((2, 1, 300), (128,))])
def test_token_n_is_patch_n(shape, patch):
    """The patch embedding is the linear map of patchify's rows: token n ↔ patch n."""
    torch.manual_seed(0)
    embed = PatchEmbed(shape[1], 6, patch)
    x = torch.randn(shape)
    weight = embed.proj.weight  # D×C×p…: reorder to patchify's (p…, C)
    flat = weight.permute(0, *range(2, weight.dim()), 1).reshape(6, -1)
    expected = patchify(x, patch) @ flat.T + embed.proj.bias
    torch.testing.assert_close(embed(x), expected, rtol=1e-5, atol=1e-5)
    assert embed.grid(x.shape) == tuple(s // p for s, p in zip(shape[2:], patch))


def test_stem_keeps_the_patch_grid():
    embed = PatchEmbed(3, 8, (1, 8, 8), stem_widths=(4, 4))
    assert embed.proj.kernel_size == (1, 2, 2)
    x = torch.randn(2, 3, 3, 36, 44)  # 36×44: whole 8×8 patches cover 32×40
    assert embed.grid(x.shape) == (3, 4, 5)
    assert embed(x).shape == (2, 60, 8)
    with pytest.raises(ValueError, match="divide by 4"):
        PatchEmbed(1, 8, (8, 10), stem_widths=(4, 4))
    with pytest.raises(ValueError, match="smaller than one"):
        embed.grid((1, 3, 1, 4, 64))


# -- attention -------------------------------------------------------------------------------------
def test_attention_is_the_textbook_formula():
    torch.manual_seed(0)
    attn = Attention(8, heads=2)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0, dim=-1)  # √4 = 2
        heads.append(weights @ v[..., cols])
    expected = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not split into 3 heads"):
        Attention(8, heads=3)


# -- encoders ----------------------------------------------------------------------------------------
def _tiny(kind="video", **kwargs):
    size = {"video": (2, 16, 16), "logmel": (16, 20), "waveform": (256,)}[kind]
    patch = {"video": (1, 8, 8), "logmel": (8, 10), "waveform": (32,)}[kind]
    return VisionTransformer(kind, size, patch, dim=12, depth=2, heads=2, **kwargs)


def test_feature_map_is_the_encoded_tokens_on_their_grid():
    torch.manual_seed(0)
    encoder = _tiny("video").eval()
    x = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        tokens, grid = encoder.embed(x)
        encoded = encoder.encode(tokens)
        fmap = encoder.feature_map(x)
        out = encoder(x)
    assert grid == (2, 2, 2) and fmap.shape == (2, 12, 2, 2, 2)
    t, h, w = 1, 0, 1
    torch.testing.assert_close(fmap[:, :, t, h, w], encoded[:, t * 4 + h * 2 + w])
    torch.testing.assert_close(out, encoded.mean(dim=1))
    torch.testing.assert_close(out, encoder.pool(fmap), rtol=0, atol=0)
    torch.testing.assert_close(encoder.pool_tokens(encoded), out)


def test_waveform_map_has_a_unit_frequency_axis_and_max_pooling():
    encoder = _tiny("waveform", pooling="max").eval()
    assert (encoder.modality, encoder.input_layout) == ("audio", "B×1×N")
    with torch.no_grad():
        fmap = encoder.feature_map(torch.randn(2, 1, 300))
        out = encoder(torch.randn(2, 1, 300))
    assert fmap.shape == (2, 12, 1, 9)
    assert out.shape == (2, 12)
    with pytest.raises(ValueError, match=r"B×1×N.*\(2, 1, 4, 300\)"):
        encoder(torch.randn(2, 1, 4, 300))


def test_position_embedding_follows_the_grid():
    encoder = _tiny("logmel")
    assert "pos_embed" not in encoder.state_dict()  # fixed sin-cos: rebuilt, not stored
    tokens, grid = encoder.embed(torch.zeros(1, 1, 16, 40))  # a longer input: 2×4 patches
    assert grid == (2, 4)
    torch.testing.assert_close(tokens - encoder.patch_embed(torch.zeros(1, 1, 16, 40)),
                               sincos_position_embedding(12, (2, 4))[None])
    learned = _tiny("logmel", position_embedding="learned")
    assert learned.state_dict()["pos_embed"].shape == (1, 4, 12) and learned.pos_embed.requires_grad
    learned.embed(torch.zeros(1, 1, 16, 20))
    with pytest.raises(ValueError, match=r"learned its position embedding for a \(2, 2\) token grid.*\(2, 4\)"):
        learned.embed(torch.zeros(1, 1, 16, 40))
    with pytest.raises(ValueError, match="position_embedding must be one of"):
        _tiny("logmel", position_embedding="rope")


def test_masked_tokens_pass_through_the_blocks():
    torch.manual_seed(0)
    encoder = _tiny("video")
    tokens, _ = encoder.embed(torch.randn(3, 3, 2, 16, 16))
    masked = random_masking(tokens, 0.75)
    encoded = encoder.encode(masked.kept)
    assert encoded.shape == (3, 2, 12)
    encoder.pool_tokens(encoded).sum().backward()
    assert encoder.patch_embed.proj.weight.grad is not None


def test_bf16_autocast_runs():
    torch.manual_seed(0)
    encoder = build_video_encoder("vit_tiny").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(torch.randn(2, 3, 1, 64, 64))
    assert out.shape == (2, 64) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name,shape,map_shape", [
    ("vit_tiny", (2, 3, 1, 64, 64), (64, 1, 8, 8)),
    ("ast_tiny", (2, 1, 64, 101), (64, 8, 10)),
    ("wat_tiny", (2, 1, 16000), (64, 1, 125)),
])
def test_tiny_configs_at_the_demo_sizes(name, shape, map_shape):
    build = build_video_encoder if name.startswith("vit") else build_audio_encoder
    encoder = build(name).eval()
    with torch.no_grad():
        assert encoder.feature_map(torch.randn(shape)).shape == (2, *map_shape)


def test_export_round_trip(tmp_path):
    recipe = {
        "seed": 0, "run_dir": "runs/test",
        "data": {"shards": "data/shards", "video": {"num_frames": 1, "fps": 8.0, "size": 32},
                 "audio": {"seconds": 0.5}, "mel": {"sample_rate": 8000, "n_mels": 32}},
        "model": {"video_encoder": {"name": "vit_tiny", "input_size": [1, 32, 32], "position_embedding": "learned"},
                  "audio_encoder": {"name": "ast_tiny", "input_size": [32, 51]}},
        "task": {"name": "toy"}, "trainer": {"max_steps": 1}, "logger": {"csv": False, "wandb": False},
    }
    torch.manual_seed(0)
    encoders = avssl.models.build_encoders(recipe["model"])
    for encoder in encoders:  # move every weight off its initial value, BN statistics included
        encoder.train()
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.01 * torch.randn_like(p))
    x_video, x_audio = torch.randn(4, 3, 1, 32, 32), torch.randn(4, 1, 32, 51)
    encoders.video_encoder(x_video), encoders.audio_encoder(x_audio)  # updates the stems' running statistics
    state = {f"{key}.{k}": v for key, enc in encoders._asdict().items() for k, v in enc.state_dict().items()}
    torch.save({"epoch": 0, "global_step": 1, "state_dict": state, "hyper_parameters": {"config": recipe}},
               tmp_path / "last.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    loaded = avssl.load_pretrained(tmp_path / "export")
    assert loaded.spec["video_encoder"]["feature_map_layout"] == "B×C×T'×H'×W'"
    for key, x in (("video_encoder", x_video), ("audio_encoder", x_audio)):
        original, restored = getattr(encoders, key).eval(), getattr(loaded, key)
        assert original.state_dict().keys() == restored.state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(restored(x), original(x), rtol=0, atol=0)


# -- ImageNet initialisation ---------------------------------------------------------------------------
def _image_vit_state(dim: int = 12, depth: int = 3, patch: int = 8) -> dict[str, torch.Tensor]:
    """An image ViT's state dict under timm's names (class token, position embedding and a
    head included), built from one of ours with an extra block."""
    torch.manual_seed(5)
    image = VisionTransformer("video", (1, 16, 16), (1, patch, patch), dim, depth, 2)
    state = {k: v.clone() for k, v in image.state_dict().items()}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]  # a 2-D kernel
    state.update({"cls_token": torch.zeros(1, 1, dim), "pos_embed": torch.zeros(1, 5, dim),
                  "head.weight": torch.zeros(10, dim)})
    return state


def test_initialise_from_an_image_vit(tmp_path):
    state = _image_vit_state()
    torch.save({"model": state}, tmp_path / "mae.pth")
    read = read_state_dict(tmp_path / "mae.pth")
    assert torch.equal(read["blocks.2.attn.qkv.weight"], state["blocks.2.attn.qkv.weight"])

    video = VisionTransformer("video", (4, 16, 16), (2, 8, 8), 12, 2, 2)  # two of the three blocks
    keys = initialise_from_vit(video, read)
    assert "patch_embed.proj.weight" in keys and not any(k.startswith("blocks.2") for k in keys)
    assert torch.equal(video.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(video.norm.weight, state["norm.weight"])
    # inflated: the 3-D kernel on a clip of identical frames gives the 2-D kernel's tokens
    frame = torch.randn(1, 3, 1, 16, 16)
    inflated = video.patch_embed(frame.expand(-1, -1, 2, -1, -1))
    image = torch.nn.functional.conv2d(frame[:, :, 0], state["patch_embed.proj.weight"],
                                       state["patch_embed.proj.bias"], stride=8)
    torch.testing.assert_close(inflated, image.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)

    audio = VisionTransformer("logmel", (16, 16), (8, 8), 12, 3, 2)
    initialise_from_vit(audio, state)
    torch.testing.assert_close(audio.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))


def test_initialise_refuses_what_does_not_fit(tmp_path):
    state = _image_vit_state()
    with pytest.raises(ValueError, match=r"patch kernel \(12, 3, 8, 8\) does not fit \(8, 10\) patches"):
        initialise_from_vit(VisionTransformer("logmel", (16, 20), (8, 10), 12, 2, 2), state)
    with pytest.raises(ValueError, match="behind a conv stem"):
        initialise_from_vit(VisionTransformer("video", (1, 16, 16), (1, 8, 8), 12, 2, 2, stem_widths=(4,)), state)
    with pytest.raises(ValueError, match=r"no 'blocks.3.norm1.weight'"):
        initialise_from_vit(VisionTransformer("video", (1, 16, 16), (1, 8, 8), 12, 4, 2), state)
    with pytest.raises(ValueError, match=r"does not fit this encoder: blocks.0.norm1.weight \(12,\) ≠ \(16,\)"):
        initialise_from_vit(VisionTransformer("video", (1, 16, 16), (1, 8, 8), 16, 2, 2), state)
    with pytest.raises(FileNotFoundError, match="initialisation file"):
        read_state_dict(tmp_path / "absent.pth")


@pytest.mark.parametrize("name,shape", [("vit_tiny", (2, 3, 1, 64, 64)), ("ast_tiny", (2, 1, 64, 101))])
def test_channels_last_gives_the_same_embeddings(name, shape):
    """The CPU recipes set model.channels_last: the transformers take it as the CNNs do."""
    torch.manual_seed(0)
    build = build_video_encoder if name.startswith("vit") else build_audio_encoder
    plain = build(name).eval()
    fast = build(name).eval()
    fast.load_state_dict(plain.state_dict())
    fast.use_channels_last()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
