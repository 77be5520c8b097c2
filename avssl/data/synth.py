"""The synthetic audio-visual set: deterministic toy videos with full ground truth.

Every clip shows one *main* sounding object of a category, sometimes a second sounding
object of another category and sometimes a silent distractor, moving over a random
cluttered background. A category is a conjunction of attributes:

* visual identity = shape × texture (× motion pattern), acoustic identity = spectrum ×
  articulation. Each single attribute is shared by two categories (for the default 8),
  and the attribute combinations that belong to no category are used for background
  clutter and for off-screen sounds, so only the conjunction names the category.
* Colour, size, position, rotation, loudness, pitch (one range for all categories), note
  durations, onset times and the background are random and carry no label information.
* Each note onset falls on a video frame, and on that frame the sounding object flashes
  and pulses in size for a few frames, so audio-visual synchronisation is learnable.

``render_clip`` renders one clip in memory (frames, mix, stems, ground truth);
``generate_dataset`` writes the whole set as mp4 (h264 + aac) files through
:mod:`avssl.data.encode`, with a ground-truth json and the clean stems as FLAC beside each
video, ``labels.csv`` and ``summary.json``. All randomness of clip ``i`` comes from
``numpy.random.default_rng((seed, i))``, so the output does not depend on the number of
worker processes. See docs/synthetic.md.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avssl.data.encode import MediaWriter, write_media

SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("solid", "stripes", "checker", "dots")
MOTIONS = ("bounce", "orbit", "zigzag", "figure8")
SPECTRA = ("sine", "odd", "saw", "bell")
ARTICULATIONS = ("pluck", "sustain", "tremolo", "glide")
MAX_CATEGORIES = len(SHAPES) * len(TEXTURES)
SPLITS = ("train", "val", "test")

# Partial frequency ratios of the inharmonic "bell" spectrum (free-bar modes).
_BELL_RATIOS = np.array([1.0, 2.756, 5.404, 8.933, 13.344])
_BELL_AMPS = np.array([1.0, 0.6, 0.4, 0.25, 0.15])


@dataclass(frozen=True)
class Category:
    """One object category: its visual and its acoustic identity."""

    index: int
    name: str
    shape: str
    texture: str
    motion: str
    spectrum: str
    articulation: str


def _design(k: int, n: int) -> tuple[int, int]:
    """Attribute pair of category ``k``: a Latin-square style design over n×n combos.

    Categories 0..n-1 take the pairs (a, a), categories n..2n-1 the pairs (a, a+1), …:
    every pair is distinct, and for 2n categories each attribute value occurs exactly
    twice, so no single attribute names the category.
    """
    a = k % n
    return a, (a + k // n) % n


def categories(num_categories: int = 8) -> list[Category]:
    """The category table for a set with ``num_categories`` categories (2..16)."""
    if not 2 <= num_categories <= MAX_CATEGORIES:
        raise ValueError(f"num_categories must be between 2 and {MAX_CATEGORIES}, got {num_categories}")
    table = []
    for k in range(num_categories):
        s, t = _design(k, len(SHAPES))
        m = (k + 2 * (k // len(MOTIONS))) % len(MOTIONS)
        # The acoustic design is the visual one shifted by one, so visual and acoustic
        # attribute values are not paired one-to-one across categories.
        a, b = _design((k + 1) % num_categories, len(SPECTRA))
        name = f"{SHAPES[s]}_{TEXTURES[t]}_{SPECTRA[a]}_{ARTICULATIONS[b]}"
        table.append(Category(k, name, SHAPES[s], TEXTURES[t], MOTIONS[m], SPECTRA[a], ARTICULATIONS[b]))
    return table


def _unused_pairs(
    used: set[tuple[str, str]], first: Sequence[str], second: Sequence[str]
) -> list[tuple[str, str]]:
    return [(x, y) for x in first for y in second if (x, y) not in used]


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides what the set looks and sounds like (the difficulty knobs).

    Ranges are ``(low, high)`` and drawn uniformly per clip, object or note. Sizes are
    fractions of the frame side so that the set scales with ``size``.
    """

    seconds: float = 4.0
    size: int = 64
    fps: float = 25.0
    sample_rate: int = 16000
    num_categories: int = 8
    seed: int = 0
    # --- scene composition
    p_second_sounding: float = 0.2  # a second sounding object of another category
    p_silent_distractor: float = 0.2  # a moving object of another category, no sound, no events
    object_diameter: tuple[float, float] = (0.34, 0.45)  # main object, of the frame side: 22–29 px at 64
    secondary_scale: tuple[float, float] = (0.6, 0.85)  # other objects' diameter vs the main one
    min_object_diameter: float = 0.25  # no object is smaller than this (16 px at 64)
    object_speed: tuple[float, float] = (0.15, 0.45)  # frame sides per second
    object_spin: float = 0.6  # max |rotation speed|, rad/s
    min_colour_contrast: float = 70.0  # RGB distance of an object's colour from the background
    # static background clutter: small translucent shapes with the shape × texture combos
    # that belong to no category, and bars; smaller and fainter than any object
    num_clutter: tuple[int, int] = (0, 1)
    clutter_diameter: tuple[float, float] = (0.1, 0.18)
    clutter_opacity: tuple[float, float] = (0.3, 0.6)
    num_clutter_bars: tuple[int, int] = (0, 1)
    bar_opacity: tuple[float, float] = (0.3, 0.7)
    pixel_noise: float = 4.0  # static per-pixel noise std (0–255)
    frame_noise: float = 2.0  # per-frame luminance noise std (0–255)
    # --- visible events at note onsets
    event_frames: int = 3
    event_flash: float = 0.5  # blend towards white on the onset frame, then decays
    event_pulse: float = 0.25  # size increase on the onset frame, then decays
    # --- notes
    notes_per_second: tuple[float, float] = (1.2, 3.0)
    min_onset_gap_seconds: float = 0.25
    f0_hz: tuple[float, float] = (200.0, 800.0)  # shared by all categories, log-uniform
    note_seconds: tuple[float, float] = (0.1, 0.45)
    vibrato_semitones: tuple[float, float] = (0.0, 0.4)  # nuisance, all categories
    nuisance_glide_semitones: float = 1.0  # nuisance: ± this over a note, all categories
    identity_glide_semitones: tuple[float, float] = (5.0, 12.0)  # the "glide" articulation
    spectral_tilt: tuple[float, float] = (-0.3, 0.4)  # partial amplitudes × ratio**-tilt
    eq_bands: int = 3  # per-clip random "microphone/room" colouring of everything heard:
    eq_gain_db: float = 9.0  # peaking filters of ± this gain, centre 150–5000 Hz, Q 0.7–2.5
    note_level_db: tuple[float, float] = (-8.0, 0.0)  # per-note velocity
    # --- levels and background audio
    clip_level_db: tuple[float, float] = (-30.0, -16.0)  # rms of the main stem, dBFS
    second_source_db: tuple[float, float] = (-9.0, -3.0)  # second sounding object vs main
    noise_snr_db: tuple[float, float] = (8.0, 30.0)  # sounding objects vs background noise
    noise_colour: tuple[float, float] = (0.0, 2.0)  # spectral slope: 0 white, 1 pink, 2 brown
    p_offscreen: float = 0.5  # off-screen notes of a non-category timbre
    offscreen_db: tuple[float, float] = (-14.0, -4.0)  # vs main
    offscreen_notes_per_second: tuple[float, float] = (0.5, 1.5)
    peak: float = 0.95  # the mix (and stems) are scaled down to at most this peak

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if self.seconds <= 0 or self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError("seconds, fps and sample_rate must be positive")
        categories(self.num_categories)  # validates the number of categories

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    @property
    def num_samples(self) -> int:
        return max(1, int(round(self.seconds * self.sample_rate)))


@dataclass
class RenderedClip:
    """One clip in memory. ``background_audio`` is noise plus off-screen notes, so that
    ``mix == stems.sum(0) + background_audio`` up to float rounding."""

    id: str
    label: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    mix: np.ndarray  # (N,) float32
    stems: np.ndarray  # (S, N) float32, one per sounding object, gt["objects"][i]["stem_channel"]
    background_audio: np.ndarray  # (N,) float32
    ground_truth: dict[str, Any]
    notes: list[dict[str, Any]] = field(default_factory=list)  # diagnostics: every note drawn


#: the spawn key of the faulty-soundtrack draws (any number other streams do not use)
FAULTY_SOUNDTRACK_STREAM = 1


def clip_id(video_index: int) -> str:
    return f"synth_{video_index:06d}"


def split_of(video_index: int, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split of a clip from its index alone.

    Uses the golden-ratio sequence ``frac((i + 1) · φ)``, which fills [0, 1) evenly, so the
    split sizes follow ``split_fractions`` to within a clip or two for any number of
    videos, and a clip keeps its split when the set is made larger.
    """
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {split_fractions}")
    fractions = fractions / fractions.sum()
    u = ((video_index + 1) * 0.6180339887498949) % 1.0
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def faulty_soundtracks(num_videos: int, fraction: float, cfg: SynthConfig,
                       split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[int, int]:
    """Which training videos get another training video's soundtrack: {receiver: donor}.

    ``round(fraction × number of training videos)`` receivers, drawn without replacement;
    each donor is drawn among the other training videos of a different category (any
    other training video when there is none). A stream of its own (seeded by ``cfg.seed``),
    so the clips' draws stay the same. Faulty positives for "Robust Audio-Visual Instance
    Discrimination" (CVPR 2021): the picture and the sound of a receiver are unrelated.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"faulty soundtrack fraction must lie in [0, 1], got {fraction}")
    train = [i for i in range(num_videos) if split_of(i, split_fractions) == "train"]
    count = int(round(fraction * len(train)))
    if count == 0:
        return {}
    if len(train) < 2:
        raise ValueError(f"a faulty soundtrack needs at least 2 training videos, got {len(train)}")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(FAULTY_SOUNDTRACK_STREAM,)))
    receivers = sorted(int(i) for i in rng.choice(train, size=count, replace=False))
    donors = {}
    for receiver in receivers:
        pool = [i for i in train if i % cfg.num_categories != receiver % cfg.num_categories]
        pool = pool or [i for i in train if i != receiver]
        donors[receiver] = pool[int(rng.integers(len(pool)))]
    return donors


# ----------------------------------------------------------------------------- plan


@dataclass
class _Object:
    category: Category
    sounding: bool
    shape: str
    texture: str
    radius_px: float
    colour_a: np.ndarray
    colour_b: np.ndarray
    texture_params: dict[str, float]
    cx: np.ndarray  # (T,) pixel centre
    cy: np.ndarray
    angle: np.ndarray  # (T,) radians
    onset_frames: list[int]
    stem_channel: int | None = None


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect ``x`` into [lo, hi] (a ball bouncing between two walls)."""
    span = max(hi - lo, 1e-6)
    z = np.mod(x - lo, 2 * span)
    return lo + np.where(z > span, 2 * span - z, z)


def _triangle_wave(x: np.ndarray) -> np.ndarray:
    """Period 1, range [-1, 1]."""
    return 4 * np.abs(np.mod(x, 1.0) - 0.5) - 1


def _motion_path(
    rng: np.random.Generator, motion: str, radius: float, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    size = cfg.size
    t = np.arange(cfg.num_frames) / cfg.fps
    lo, hi = 0.85 * radius, size - 0.85 * radius  # (a shape reaches 0.77–1.36 radii from its centre)
    speed = _uniform(rng, cfg.object_speed) * size
    if motion == "bounce":
        x0, y0 = rng.uniform(lo, hi, size=2)
        heading = rng.uniform(0, 2 * np.pi)
        x = _fold(x0 + speed * np.cos(heading) * t, lo, hi)
        y = _fold(y0 + speed * np.sin(heading) * t, lo, hi)
    elif motion == "orbit":
        r = rng.uniform(0.12, 0.22) * size
        c = rng.uniform(min(lo + r, size / 2), max(hi - r, size / 2), size=2)
        omega = rng.choice([-1, 1]) * speed / r
        phase = rng.uniform(0, 2 * np.pi)
        x = c[0] + r * np.cos(omega * t + phase)
        y = c[1] + r * np.sin(omega * t + phase)
    elif motion == "zigzag":
        amp = rng.uniform(0.08, 0.18) * size
        freq = rng.uniform(0.8, 1.6)
        along0 = rng.uniform(lo, hi)
        across0 = rng.uniform(min(lo + amp, size / 2), max(hi - amp, size / 2))
        direction = rng.choice([-1, 1])
        along = _fold(along0 + direction * speed * t, lo, hi)
        across = across0 + amp * _triangle_wave(freq * t + rng.uniform(0, 1))
        x, y = (along, across) if rng.random() < 0.5 else (across, along)
    elif motion == "figure8":
        ax, ay = rng.uniform(0.12, 0.22) * size, rng.uniform(0.07, 0.14) * size
        omega = rng.choice([-1, 1]) * 2 * np.pi * rng.uniform(0.25, 0.5)
        c = [rng.uniform(min(lo + a, size / 2), max(hi - a, size / 2)) for a in (ax, ay)]
        phase = rng.uniform(0, 2 * np.pi)
        x = c[0] + ax * np.sin(omega * t + phase)
        y = c[1] + ay * np.sin(2 * (omega * t + phase))
        if rng.random() < 0.5:
            x, y = c[0] + (y - c[1]) * ax / ay, c[1] + (x - c[0]) * ay / ax
            x, y = np.clip(x, lo, hi), np.clip(y, lo, hi)
    else:  # pragma: no cover - the table only holds the motions above
        raise ValueError(motion)
    return x.astype(np.float32), y.astype(np.float32)


def _random_colour(rng: np.random.Generator, avoid: np.ndarray, min_distance: float) -> np.ndarray:
    for _ in range(32):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - avoid) >= min_distance:
            return colour.astype(np.float32)
    return (255 - avoid).astype(np.float32)


def _second_colour(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """The texture's second colour: the same hue, clearly darker or lighter, so that a
    texture is a luminance pattern whatever the (random) colour."""
    if colour.mean() > 110:
        return (colour * rng.uniform(0.2, 0.45)).astype(np.float32)
    return (colour + (255 - colour) * rng.uniform(0.5, 0.8)).astype(np.float32)


def _texture_params(rng: np.random.Generator, texture: str) -> dict[str, float]:
    params = {"angle": float(rng.uniform(0, np.pi)), "phase": float(rng.uniform(0, 1))}
    if texture == "stripes":
        params["period"] = float(rng.uniform(4.0, 7.0))
    elif texture == "checker":
        params["period"] = float(rng.uniform(3.0, 5.0))
    elif texture == "dots":
        params["period"] = float(rng.uniform(4.5, 6.5))
        params["dot"] = float(rng.uniform(0.25, 0.38))
    else:
        params["shade"] = float(rng.uniform(-0.25, 0.25))
    return params


def _onset_frames(rng: np.random.Generator, cfg: SynthConfig, rate: float) -> list[int]:
    """Random (not periodic) onsets on the frame grid, at least min_onset_gap apart."""
    fps, T = cfg.fps, cfg.num_frames
    min_gap = max(1, math.ceil(cfg.min_onset_gap_seconds * fps))
    mean_gap = fps / rate
    last = max(0, T - max(1, int(round(0.1 * fps))))
    frame = int(rng.integers(0, max(1, int(round(mean_gap))) ))
    frames = []
    while frame <= last:
        frames.append(frame)
        frame += min_gap + int(round(rng.exponential(max(mean_gap - min_gap, 0.5))))
    return frames or [0]


def _make_object(
    rng: np.random.Generator,
    category: Category,
    sounding: bool,
    background_mean: np.ndarray,
    cfg: SynthConfig,
    main_diameter: float | None = None,
) -> _Object:
    """An object of ``category``; objects other than the main one (``main_diameter`` given)
    are smaller than it, so the main object is the largest as well as the loudest."""
    if main_diameter is None:
        diameter = _uniform(rng, cfg.object_diameter) * cfg.size
    else:
        diameter = max(main_diameter * _uniform(rng, cfg.secondary_scale), cfg.min_object_diameter * cfg.size)
    radius = diameter / 2
    colour_a = _random_colour(rng, background_mean, cfg.min_colour_contrast)
    colour_b = _second_colour(rng, colour_a)
    params = _texture_params(rng, category.texture)
    cx, cy = _motion_path(rng, category.motion, radius, cfg)
    t = np.arange(cfg.num_frames) / cfg.fps
    angle = (rng.uniform(0, 2 * np.pi) + rng.uniform(-cfg.object_spin, cfg.object_spin) * t).astype(np.float32)
    onsets = _onset_frames(rng, cfg, _uniform(rng, cfg.notes_per_second)) if sounding else []
    return _Object(category, sounding, category.shape, category.texture, radius, colour_a, colour_b, params,
                   cx, cy, angle, onsets)


# ----------------------------------------------------------------------------- video


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii, negative inside) of a shape of radius 1.

    The four category shapes have the same area (2.4 r²), so size says nothing about the
    category and the main object, the largest one, is the largest in pixels too. Every
    shape lies within ``_SHAPE_EXTENT`` radii of its centre.
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 0.874
    au, av_ = np.abs(u), np.abs(v)
    if shape == "square":
        return np.maximum(au, av_) - 0.775
    if shape == "triangle":  # equilateral, circumradius 1.36, pointing up
        return np.maximum(-v, np.maximum(0.8660254 * u + 0.5 * v, -0.8660254 * u + 0.5 * v)) - 0.68
    if shape == "cross":
        arm, half_width = 1.013, 0.36
        return np.minimum(np.maximum(au - arm, av_ - half_width), np.maximum(au - half_width, av_ - arm))
    if shape == "bar":  # clutter only; stretched by its aspect ratio
        return np.maximum(au - 1.0, av_ - 0.28)
    raise ValueError(shape)  # pragma: no cover


_SHAPE_EXTENT = 1.4


def _texture(texture: str, params: dict[str, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Texture value in [0, 1] (0 = colour a, 1 = colour b) at object pixel coords x, y."""
    if texture == "solid":
        return np.clip(params["shade"] * x / 10.0, 0.0, 0.35)  # a faint shading gradient
    c, s = math.cos(params["angle"]), math.sin(params["angle"])
    p, q = c * x + s * y, -s * x + c * y
    period = params["period"]
    if texture == "stripes":
        return (np.mod(p / period + params["phase"], 1.0) < 0.5).astype(np.float32)
    if texture == "checker":
        return (np.mod(np.floor(p / period + params["phase"]) + np.floor(q / period), 2.0)).astype(np.float32)
    if texture == "dots":
        gp = np.mod(p / period + params["phase"], 1.0) - 0.5
        gq = np.mod(q / period, 1.0) - 0.5
        return (gp * gp + gq * gq < params["dot"] ** 2).astype(np.float32)
    raise ValueError(texture)  # pragma: no cover


def _layer(
    shape: str,
    texture: str,
    params: dict[str, float],
    colour_a: np.ndarray,
    colour_b: np.ndarray,
    radius: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    angle: np.ndarray,
    size: int,
    aspect: float = 1.0,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A shape at K poses, vectorised: alpha (K, w, w), colour (K, w, w, 3) and the
    window's top-left pixel per pose (x0, y0). ``window`` (pixels) computes only a square
    around each centre, which must hold the whole shape; None renders the whole frame."""
    w = size if window is None else min(size, window)
    x0 = np.clip(np.floor(cx).astype(np.int64) - w // 2, 0, size - w)
    y0 = np.clip(np.floor(cy).astype(np.int64) - w // 2, 0, size - w)
    grid = np.arange(w, dtype=np.float32) + 0.5
    dx = grid[None, None, :] + (x0 - cx)[:, None, None].astype(np.float32)
    dy = grid[None, :, None] + (y0 - cy)[:, None, None].astype(np.float32)
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x = c * dx + s * dy  # object frame, pixels
    y = -s * dx + c * dy
    r = radius[:, None, None]
    distance = _shape_distance(shape, x / (r * aspect), y / r) * r  # ≈ pixels
    alpha = np.clip(0.5 - distance, 0.0, 1.0)
    tex = _texture(texture, params, x, y)
    colour = colour_a + (colour_b - colour_a) * tex[..., None]
    return alpha.astype(np.float32), colour.astype(np.float32), x0, y0


def _background(rng: np.random.Generator, cfg: SynthConfig, visual_clutter: list[tuple[str, str]]) -> np.ndarray:
    """Static background (H, W, 3) float: random gradient, clutter, pixel noise."""
    size = cfg.size
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = np.cos(direction) * grid[None, :] + np.sin(direction) * grid[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = c0 + (c1 - c0) * ramp[..., None]
    items: list[tuple[str, str]] = []
    n_textured = int(rng.integers(cfg.num_clutter[0], cfg.num_clutter[1] + 1))
    for _ in range(n_textured):
        items.append(visual_clutter[int(rng.integers(len(visual_clutter)))] if visual_clutter
                     else (SHAPES[int(rng.integers(len(SHAPES)))], "solid"))
    n_bars = int(rng.integers(cfg.num_clutter_bars[0], cfg.num_clutter_bars[1] + 1))
    items += [("bar", "solid") for _ in range(n_bars)]
    for shape, texture in items:
        if shape == "bar":
            radius = rng.uniform(0.12, 0.25) * size / 2
            aspect = rng.uniform(2.5, 6.0)
            opacity = _uniform(rng, cfg.bar_opacity)
        else:
            radius = _uniform(rng, cfg.clutter_diameter) * size / 2
            aspect = 1.0
            opacity = _uniform(rng, cfg.clutter_opacity)
        cx, cy = rng.uniform(0, size, size=2)
        colour_a = rng.uniform(0, 255, size=3).astype(np.float32)
        colour_b = _second_colour(rng, colour_a)
        params = _texture_params(rng, texture)
        alpha, colour, _, _ = _layer(shape, texture, params, colour_a, colour_b, np.array([radius], np.float32),
                               np.array([cx], np.float32), np.array([cy], np.float32),
                               np.array([rng.uniform(0, 2 * np.pi)], np.float32), size, aspect)
        alpha = alpha[0, ..., None] * opacity
        image = image * (1 - alpha) + colour[0] * alpha
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(cfg.pixel_noise)
    return image


def _event_envelope(onset_frames: Sequence[int], cfg: SynthConfig) -> np.ndarray:
    """Strength of the visible event per frame: 1 on the onset frame, decaying after."""
    envelope = np.zeros(cfg.num_frames, dtype=np.float32)
    decay = np.linspace(1.0, 0.3, max(1, cfg.event_frames)).astype(np.float32)
    for onset in onset_frames:
        stop = min(cfg.num_frames, onset + len(decay))
        envelope[onset:stop] = np.maximum(envelope[onset:stop], decay[: stop - onset])
    return envelope


def _boxes(alpha: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> list[list[float] | None]:
    """Tight pixel box [x0, y0, x1, y1) of alpha > 0 in each frame (None if not visible);
    ``alpha`` is a window whose top-left pixel in frame t is (x0[t], y0[t])."""
    inside = alpha > 0
    cols, rows = inside.any(axis=1), inside.any(axis=2)  # (T, w), (T, w)
    boxes: list[list[float] | None] = []
    for col, row, dx, dy in zip(cols, rows, x0.tolist(), y0.tolist()):
        if not col.any():
            boxes.append(None)
            continue
        x = np.flatnonzero(col)
        y = np.flatnonzero(row)
        boxes.append([float(dx + x[0]), float(dy + y[0]), float(dx + x[-1] + 1), float(dy + y[-1] + 1)])
    return boxes


# ----------------------------------------------------------------------------- audio


def _partials(
    rng: np.random.Generator, spectrum: str, f_max: float, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    nyquist_limit = 0.45 * cfg.sample_rate
    if spectrum == "sine":
        ratios = np.array([1.0, 2.0, 3.0])
        amps = np.array([1.0, rng.uniform(0.0, 0.08), rng.uniform(0.0, 0.04)])
    elif spectrum in ("odd", "saw"):
        n = np.arange(1, max(2, int(nyquist_limit // f_max)) + 1, dtype=np.float64)
        if spectrum == "odd":
            n = n[n % 2 == 1]
        ratios, amps = n, 1.0 / n
    elif spectrum == "bell":
        ratios, amps = _BELL_RATIOS.copy(), _BELL_AMPS * rng.uniform(0.7, 1.3, size=len(_BELL_AMPS))
        amps[0] = 1.0
    else:  # pragma: no cover
        raise ValueError(spectrum)
    amps = amps * ratios ** (-_uniform(rng, cfg.spectral_tilt))
    keep = ratios * f_max < nyquist_limit
    keep[0] = True
    return ratios[keep], amps[keep]


def _note(
    rng: np.random.Generator, spectrum: str, articulation: str, n: int, cfg: SynthConfig
) -> tuple[np.ndarray, float]:
    """One note of ``n`` samples; returns the waveform (peak ~1) and its f0 in Hz."""
    sr = cfg.sample_rate
    t = np.arange(n) / sr
    duration = n / sr
    f0 = math.exp(rng.uniform(math.log(cfg.f0_hz[0]), math.log(cfg.f0_hz[1])))
    # pitch contour in semitones: nuisance vibrato and glide for everyone, a large glide
    # only for the "glide" articulation
    vibrato_depth, vibrato_hz = _uniform(rng, cfg.vibrato_semitones), rng.uniform(4.0, 7.0)
    semis = vibrato_depth * np.sin(2 * np.pi * vibrato_hz * t + rng.uniform(0, 6.3))
    semis = semis + rng.uniform(-1, 1) * cfg.nuisance_glide_semitones * t / duration
    if articulation == "glide":
        semis = semis + rng.choice([-1, 1]) * _uniform(rng, cfg.identity_glide_semitones) * t / duration
    freq = f0 * 2.0 ** (semis / 12.0)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    ratios, amps = _partials(rng, spectrum, float(freq.max()), cfg)
    offsets = rng.uniform(0, 2 * np.pi, size=len(ratios))
    wave = (amps[:, None] * np.sin(ratios[:, None] * phase[None, :] + offsets[:, None])).sum(0)
    # envelope
    release = min(duration / 3, rng.uniform(0.01, 0.04))
    if articulation == "pluck":
        attack = rng.uniform(0.002, 0.008)
        envelope = np.exp(-np.maximum(t - attack, 0) / rng.uniform(0.04, 0.15))
    else:
        attack = min(duration / 3, rng.uniform(0.015, 0.05))
        envelope = 10 ** (rng.uniform(-4, 2) / 20 * t / duration)  # slight random slope
        if articulation == "tremolo":
            depth = rng.uniform(0.5, 0.9)
            envelope = envelope * (1 - depth * (0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(7.0, 13.0) * t)))
    envelope = envelope * np.clip(t / max(attack, 1e-4), 0, 1) * np.clip((duration - t) / max(release, 1e-4), 0, 1)
    wave = wave * envelope
    peak = float(np.abs(wave).max())
    return (wave / peak if peak > 0 else wave).astype(np.float32), f0


def _render_notes(
    rng: np.random.Generator,
    spectrum: str,
    articulation: str,
    onset_samples: Sequence[int],
    cfg: SynthConfig,
    owner: int,
    notes: list[dict[str, Any]],
) -> np.ndarray:
    N = cfg.num_samples
    out = np.zeros(N, dtype=np.float32)
    for i, start in enumerate(onset_samples):
        next_start = onset_samples[i + 1] if i + 1 < len(onset_samples) else N
        low = cfg.note_seconds[0] if articulation == "pluck" else max(cfg.note_seconds[0], 0.12)
        seconds = rng.uniform(low, max(low, cfg.note_seconds[1]))
        n = int(min(seconds * cfg.sample_rate, next_start - start, N - start))
        if n <= 8:
            continue
        wave, f0 = _note(rng, spectrum, articulation, n, cfg)
        level = 10 ** (_uniform(rng, cfg.note_level_db) / 20)
        out[start : start + n] += level * wave
        notes.append({"object": owner, "onset_seconds": start / cfg.sample_rate, "f0_hz": f0,
                      "seconds": n / cfg.sample_rate, "level": level, "spectrum": spectrum,
                      "articulation": articulation})
    return out


def _coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    noise = np.fft.irfft(spectrum * freqs ** (-slope / 2), n)
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def _random_equaliser(rng: np.random.Generator, cfg: SynthConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Causal peaking biquads (gain, centre, Q random): a smooth random spectral colouring.
    Causal, so a source stays silent before its first onset."""
    filters = []
    for _ in range(cfg.eq_bands):
        gain_db = rng.uniform(-cfg.eq_gain_db, cfg.eq_gain_db)
        centre = math.exp(rng.uniform(math.log(150.0), math.log(min(5000.0, 0.4 * cfg.sample_rate))))
        q = rng.uniform(0.7, 2.5)
        amp = 10 ** (gain_db / 40)
        w0 = 2 * math.pi * centre / cfg.sample_rate
        alpha = math.sin(w0) / (2 * q)
        b = np.array([1 + alpha * amp, -2 * math.cos(w0), 1 - alpha * amp])
        a = np.array([1 + alpha / amp, -2 * math.cos(w0), 1 - alpha / amp])
        filters.append((b / a[0], a / a[0]))
    return filters


def _equalise(x: np.ndarray, filters: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from scipy.signal import lfilter

    for b, a in filters:
        x = lfilter(b, a, x, axis=-1)
    return np.asarray(x, dtype=np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# ----------------------------------------------------------------------------- clip


def render_clip(
    video_index: int,
    cfg: SynthConfig = SynthConfig(),
    *,
    objects: Sequence[int] | None = None,
    events: bool = True,
) -> RenderedClip:
    """Render clip ``video_index`` of the set described by ``cfg``, without encoding.

    ``objects`` (indices into ``ground_truth["objects"]``; default all) and ``events``
    change only what is drawn, never the random draws: the ground truth, the audio and the
    background stay the same. Tests and figures use them to isolate what a pixel shows.
    """
    table = categories(cfg.num_categories)
    rng = np.random.default_rng((cfg.seed, video_index))
    scene_rng, background_rng, noise_rng, audio_rng = rng.spawn(4)
    T, N, size = cfg.num_frames, cfg.num_samples, cfg.size

    # --- who is in the clip
    main = table[video_index % cfg.num_categories]
    others = [c for c in table if c.index != main.index]
    cast: list[tuple[Category, bool]] = [(main, True)]
    if scene_rng.random() < cfg.p_second_sounding:
        cast.append((others.pop(int(scene_rng.integers(len(others)))), True))
    if scene_rng.random() < cfg.p_silent_distractor and others:  # (2 categories: maybe none left)
        cast.append((others.pop(int(scene_rng.integers(len(others)))), False))

    used_visual = {(c.shape, c.texture) for c in table}
    used_audio = {(c.spectrum, c.articulation) for c in table}
    visual_clutter = _unused_pairs(used_visual, SHAPES, TEXTURES)
    audio_clutter = _unused_pairs(used_audio, SPECTRA, ARTICULATIONS) or sorted(used_audio)

    background = _background(background_rng, cfg, visual_clutter)
    background_mean = background.reshape(-1, 3).mean(0)
    scene = [_make_object(scene_rng, main, True, background_mean, cfg)]
    main_diameter = 2 * scene[0].radius_px
    scene += [_make_object(scene_rng, category, sounding, background_mean, cfg, main_diameter)
              for category, sounding in cast[1:]]
    channel = 0
    for obj in scene:
        if obj.sounding:
            obj.stem_channel, channel = channel, channel + 1
    draw_order = scene_rng.permutation(len(scene))

    # --- video
    frames = np.repeat(background[None], T, axis=0)
    boxes: list[list[list[float] | None]] = []
    layers = []
    for obj in scene:
        envelope = _event_envelope(obj.onset_frames, cfg)
        radius = np.full(T, obj.radius_px, dtype=np.float32) * (1 + cfg.event_pulse * envelope)
        # render only the window around the centre that holds the shape
        window = int(math.ceil(2 * (_SHAPE_EXTENT * float(radius.max()) + 1))) + 1
        alpha, colour, x0, y0 = _layer(obj.shape, obj.texture, obj.texture_params, obj.colour_a, obj.colour_b,
                                       radius, obj.cx, obj.cy, obj.angle, size, window=window)
        colour += (255.0 - colour) * (cfg.event_flash * envelope)[:, None, None, None]
        boxes.append(_boxes(alpha, x0, y0))
        if not events:
            radius = np.full(T, obj.radius_px, dtype=np.float32)
            alpha, colour, x0, y0 = _layer(obj.shape, obj.texture, obj.texture_params, obj.colour_a, obj.colour_b,
                                           radius, obj.cx, obj.cy, obj.angle, size, window=window)
        layers.append((alpha, colour, x0, y0))
    visible = set(range(len(scene)) if objects is None else objects)
    for i in draw_order:
        if i in visible:
            alpha, colour, x0, y0 = layers[i]
            w = alpha.shape[1]
            a = alpha[..., None]
            # a slice per frame: the same arithmetic as one fancy-indexed update, which was much
            # slower per object and clip (docs/benchmarks.md)
            for t, (top, left) in enumerate(zip(y0.tolist(), x0.tolist())):
                patch = frames[t, top:top + w, left:left + w]
                patch[...] = patch * (1 - a[t]) + colour[t] * a[t]
    frames += noise_rng.standard_normal((T, size, size, 1), dtype=np.float32) * np.float32(cfg.frame_noise)
    frames = np.clip(np.rint(frames, out=frames), 0, 255, out=frames).astype(np.uint8)

    # --- audio
    notes: list[dict[str, Any]] = []
    samples_per_frame = cfg.sample_rate / cfg.fps
    stems = []
    for index, obj in enumerate(scene):
        if obj.sounding:
            onsets = [int(round(f * samples_per_frame)) for f in obj.onset_frames]
            category = obj.category
            stems.append(
                _render_notes(audio_rng, category.spectrum, category.articulation, onsets, cfg, index, notes))
    # one random "microphone/room" colouring for everything heard, applied before the levels
    # are set so that the main object stays the loudest and the SNR is what was drawn
    equaliser = _random_equaliser(audio_rng, cfg)
    stems = [_equalise(stem, equaliser) for stem in stems]
    main_level = 10 ** (_uniform(audio_rng, cfg.clip_level_db) / 20)
    stems[0] *= main_level / max(_rms(stems[0]), 1e-9)
    for k in range(1, len(stems)):
        stems[k] *= main_level * 10 ** (_uniform(audio_rng, cfg.second_source_db) / 20) / max(_rms(stems[k]), 1e-9)
    stem_array = np.stack(stems).astype(np.float32)
    noise = _equalise(_coloured_noise(audio_rng, N, _uniform(audio_rng, cfg.noise_colour)), equaliser)
    noise_level = _rms(stem_array.sum(0)) * 10 ** (-_uniform(audio_rng, cfg.noise_snr_db) / 20)
    background_audio = noise * (noise_level / max(_rms(noise), 1e-12))
    if audio_rng.random() < cfg.p_offscreen:
        spectrum, articulation = audio_clutter[int(audio_rng.integers(len(audio_clutter)))]
        rate = _uniform(audio_rng, cfg.offscreen_notes_per_second)
        starts, t = [], audio_rng.uniform(0, 1 / rate)
        while t < cfg.seconds - 0.1:
            starts.append(int(t * cfg.sample_rate))
            t += cfg.min_onset_gap_seconds + audio_rng.exponential(1 / rate)
        offscreen = _equalise(_render_notes(audio_rng, spectrum, articulation, starts, cfg, -1, notes), equaliser)
        if _rms(offscreen) > 0:
            offscreen *= main_level * 10 ** (_uniform(audio_rng, cfg.offscreen_db) / 20) / _rms(offscreen)
            background_audio = background_audio + offscreen
    mix = stem_array.sum(0) + background_audio
    peak = max(float(np.abs(mix).max()), float(np.abs(stem_array).max()), 1e-9)
    if peak > cfg.peak:
        gain = cfg.peak / peak
        stem_array *= gain
        background_audio = background_audio * gain
        mix = stem_array.sum(0) + background_audio
        for note in notes:
            note["level"] *= gain

    ground_truth = {
        "id": clip_id(video_index),
        "label": main.name,
        "seconds": cfg.seconds,
        "fps": cfg.fps,
        "sample_rate": cfg.sample_rate,
        "size": size,
        "categories": [c.name for c in table],
        "objects": [
            {
                "category": obj.category.name,
                "sounding": obj.sounding,
                "boxes": box_list,
                "onsets": [round(f / cfg.fps, 6) for f in obj.onset_frames],
                "stem_channel": obj.stem_channel,
            }
            for obj, box_list in zip(scene, boxes)
        ],
    }
    return RenderedClip(clip_id(video_index), main.name, frames, mix.astype(np.float32), stem_array,
                        background_audio.astype(np.float32), ground_truth, notes)


# ----------------------------------------------------------------------------- dataset


def _write_clip(task: tuple[int, SynthConfig, str, str, int | None]) -> tuple[int, str, str]:
    video_index, cfg, videos_dir, split, donor = task
    clip = render_clip(video_index, cfg)
    if donor is not None:  # the donor's soundtrack: its mix and its stems
        sound = render_clip(donor, cfg)
        clip.mix, clip.stems = sound.mix, sound.stems
        clip.ground_truth = {**clip.ground_truth, "soundtrack_from": clip_id(donor)}
    stem_path = Path(videos_dir) / clip.id
    with MediaWriter(f"{stem_path}.mp4", width=cfg.size, height=cfg.size, fps=cfg.fps, sample_rate=cfg.sample_rate,
                     gop_frames=max(1, int(round(cfg.fps))), crf=20) as writer:
        # FFmpeg's default aac coder ("twoloop") costs 3× the time for no audible gain here
        writer.audio.options = {"aac_coder": "fast"}
        writer.add_audio(clip.mix[None])
        for frame in clip.frames:
            writer.add_frame(frame)
    write_media(f"{stem_path}.stems.flac", None, cfg.fps, clip.stems, cfg.sample_rate,
                video_codec=None, audio_codec="flac", container_format="flac")
    with open(f"{stem_path}.gt.json", "w") as f:
        json.dump(clip.ground_truth, f, separators=(",", ":"))
    return video_index, clip.label, split


def write_dataset(
    out_dir: Path | str,
    num_videos: int,
    cfg: SynthConfig = SynthConfig(),
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    workers: int = 1,
    progress: bool = True,
    faulty_soundtrack_fraction: float = 0.0,
) -> dict[str, Any]:
    """Write ``num_videos`` clips of the set ``cfg`` under ``out_dir`` (see the module doc).

    ``faulty_soundtrack_fraction``: that fraction of the training videos carry another
    training video's soundtrack (:func:`faulty_soundtracks`); 0 writes exactly the set
    without the option."""
    from tqdm import tqdm

    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}")
    out_dir = Path(out_dir)
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    donors = faulty_soundtracks(num_videos, faulty_soundtrack_fraction, cfg, split_fractions)
    tasks = [(i, cfg, str(videos_dir), split_of(i, split_fractions), donors.get(i)) for i in range(num_videos)]
    rows: list[tuple[int, str, str]] = []
    bar = tqdm(total=num_videos, desc="synth", unit="video", disable=not progress)
    if workers <= 1:
        for task in tasks:
            rows.append(_write_clip(task))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap_unordered(_write_clip, tasks, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    rows.sort()
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "split"])
        for index, label, split in rows:
            writer.writerow([clip_id(index), label, split])
    split_counts = {name: sum(1 for r in rows if r[2] == name) for name in SPLITS}
    label_counts = {c.name: sum(1 for r in rows if r[1] == c.name) for c in categories(cfg.num_categories)}
    summary = {
        "videos": num_videos,
        "hours": round(num_videos * cfg.seconds / 3600, 4),
        "splits": split_counts,
        "labels": label_counts,
        "split_fractions": list(split_fractions),
        "config": asdict(cfg),
        "categories": [asdict(c) for c in categories(cfg.num_categories)],
    }
    if donors:
        summary["faulty_soundtracks"] = {"fraction": faulty_soundtrack_fraction,
                                         "soundtrack_from": {clip_id(i): clip_id(d) for i, d in donors.items()}}
    with open(out_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def generate_dataset(
    out_dir: Path,
    num_videos: int,
    seconds: float = 4.0,
    size: int = 64,
    fps: float = 25.0,
    sample_rate: int = 16000,
    num_categories: int = 8,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int = 1,
    faulty_soundtrack_fraction: float = 0.0,
) -> dict:
    """Write the synthetic set with default difficulty; returns its summary (the one of
    summary.json; :func:`summary_line` says it in one line).

    For the other knobs build a :class:`SynthConfig` and call :func:`write_dataset`.
    """
    cfg = SynthConfig(seconds=seconds, size=size, fps=fps, sample_rate=sample_rate,
                      num_categories=num_categories, seed=seed)
    return write_dataset(out_dir, num_videos, cfg, split_fractions, workers,
                         faulty_soundtrack_fraction=faulty_soundtrack_fraction)


def summary_line(summary: dict[str, Any], out_dir: Path | str) -> str:
    """The line `avssl synth` prints for the set it wrote: videos, hours and splits."""
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    return f"wrote {summary['videos']} videos ({summary['hours']:.2f} h; {splits}) to {out_dir}"
