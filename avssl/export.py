"""Lightning checkpoint → portable encoder files, and :func:`load_pretrained`.

An export folder holds

* ``video_encoder.safetensors`` / ``audio_encoder.safetensors``: each encoder's weights,
  and nothing that needs pickle to read. For encoders that wrap a torchvision architecture
  the file holds the torchvision model's own state dict (``weights_convention:
  "torchvision"``), so it loads with ``strict=True`` into e.g.
  ``torchvision.models.video.r2plus1d_18()``; other encoders store their own state dict
  (``"avssl"``).
* ``model.json``: which encoder each file is (registry name and kwargs), the input each
  encoder expects (window, normalisation, log-mel settings, layout), the resolved recipe
  and the source checkpoint. ``format_version`` is bumped on any incompatible change.

Modalities the task had no encoder for (single-modality tasks) are ``null`` in model.json
and have no file.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from avssl.config import without_retired_keys
from avssl.data.errors import DataError
from avssl.data.transforms import VIDEO_MEAN, VIDEO_STD
from avssl.data.views import AudioView, MelSettings, VideoView, input_views
from avssl.model_card import DEFAULT_LICENSE, MODEL_CARD, model_card, pretext_metrics, read_evaluations
from avssl.models.base import Encoder, TorchvisionBackbone
from avssl.models.registry import AUDIO_ENCODERS, VIDEO_ENCODERS, build_encoders, encoder_spec

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
ENCODER_KEYS = ("video_encoder", "audio_encoder")
VIDEO_LAYOUT = "B×3×T×H×W"
AUDIO_LAYOUT = "B×1×F×T"
_REGISTRIES = {"video_encoder": VIDEO_ENCODERS, "audio_encoder": AUDIO_ENCODERS}

__all__ = ["CheckpointError", "ExportError", "PretrainedEncoders", "build_encoders", "checkpoint_recipe",
           "export_checkpoint", "load_checkpoint", "load_pretrained", "load_state_strict"]

log = logging.getLogger(__name__)


class ExportError(DataError):
    """A checkpoint or export folder that cannot be used as it is; the message names the file
    and says why (a data error: the CLI prints it as one line and exits with status 1)."""


class CheckpointError(ExportError):
    """A checkpoint avssl will not or cannot read: missing, damaged, or needing pickle."""


# -- reading the checkpoint ---------------------------------------------------------------------
def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# Why torch.load refused a file: the WeightsUnpickler's own line, without its advice to
# re-run with pickle allowed.
_REFUSAL = re.compile(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)")


def _refusal_reason(error: Exception) -> str:
    match = _REFUSAL.search(str(error))
    return match.group(1).strip() if match else str(error).strip().splitlines()[0]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The one way avssl reads a ``.ckpt`` (export, the evaluation verbs, ``resume``).

    Only ``torch.load(weights_only=True)``: unpickling a file can run any code in it, and a
    checkpoint is a file people download and share. avssl's own checkpoints hold tensors and
    plain containers only, so they load; a file that needs more is refused
    (:class:`CheckpointError`, one line naming the file and the reason), never retried
    with pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save's format; a file cut short has no central directory
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (no torch.save zip archive in it: "
                              "another kind of file, or one cut short)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: it holds objects that only pickle can rebuild, and unpickling a file can run "
            f"code in it ({_refusal_reason(error)}); avssl loads checkpoints with weights_only=True only"
        ) from None
    except Exception as error:  # noqa: BLE001 - any other failure of a damaged file: one line, not a traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {reason}") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (a dict), got {type(checkpoint).__name__}")
    return dict(checkpoint)


def checkpoint_recipe(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The resolved recipe an avssl task saved in its checkpoint (``hyper_parameters['config']``)."""
    hparams = _plain(checkpoint.get("hyper_parameters") or {})
    config = _plain(hparams.get("config")) if isinstance(hparams, Mapping) else None
    if not isinstance(config, Mapping):
        raise ExportError(
            f"{path} has no resolved recipe in hyper_parameters['config']; it was not written by an avssl "
            "task (tasks call save_hyperparameters({'config': recipe}))"
        )
    if not isinstance(config.get("model"), Mapping):
        raise ExportError(f"{path}: the recipe in hyper_parameters['config'] has no 'model' section")
    return without_retired_keys(dict(config))


def _sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_state_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict(strict=True)``; a mismatch is an ExportError naming ``where``."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise ExportError(f"{where}: the weights do not match the architecture the config names:\n{error}") from None


# -- the input spec -------------------------------------------------------------------------------
def _fill(cls: type, section: Any) -> dict[str, Any]:
    """A dataclass's fields, defaults overridden by what the recipe section sets."""
    values = asdict(cls())
    if isinstance(section, Mapping):
        values.update({f.name: section[f.name] for f in fields(cls) if f.name in section})
    return values


def input_spec(recipe: Mapping[str, Any], has_video: bool, has_audio: bool) -> dict[str, Any]:
    """The ``inputs`` block of model.json: what each exported encoder expects."""
    data = recipe.get("data") or {}
    inputs: dict[str, Any] = {"video": None, "audio": None}
    if has_video:
        video = _fill(VideoView, data.get("video"))
        inputs["video"] = {
            "num_frames": video["num_frames"],
            "fps": video["fps"],
            "size": video["size"],
            "mean": list(VIDEO_MEAN),
            "std": list(VIDEO_STD),
            "layout": VIDEO_LAYOUT,
            "scaling": "RGB frames scaled to [0, 1], then (x - mean) / std per channel",
        }
    if has_audio:
        audio = _fill(AudioView, data.get("audio"))
        mel = _fill(MelSettings, data.get("mel"))
        inputs["audio"] = {
            "seconds": audio["seconds"],
            "sample_rate": mel["sample_rate"],
            "representation": audio["representation"],
            "mel": mel,
            "num_mel_frames": MelSettings(**mel).num_frames(audio["seconds"]),
            "layout": AUDIO_LAYOUT,
            "scaling": "log(mel power spectrogram + log_offset), torchaudio MelSpectrogram, mono",
        }
    return inputs


# -- export -------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"model.json: cannot write a {type(value).__name__} ({value!r}) as JSON")


def _readable_mode() -> int:
    """The mode a plain new file gets here (0o666 less the umask), e.g. 0o644: safetensors
    creates its files 0o600, unreadable to the colleagues an export is shared with."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_encoder(encoder: Encoder, name: str, kwargs: dict[str, Any], key: str, out_dir: Path) -> dict[str, Any]:
    torchvision = isinstance(encoder, TorchvisionBackbone)
    module = encoder.backbone if torchvision else encoder
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    file = f"{key}.safetensors"
    convention = "torchvision" if torchvision else "avssl"
    log.info("writing %s (%s, %d tensors)", file, name, len(tensors))
    save_file(tensors, str(out_dir / file),
              metadata={"avssl_format_version": str(FORMAT_VERSION), "encoder": name, "weights_convention": convention})
    os.chmod(out_dir / file, _readable_mode())
    return {
        "name": name,
        "kwargs": kwargs,
        "embedding_dim": int(encoder.embedding_dim),
        "pooling": encoder.pooling,
        "feature_map_layout": "B×C×T'×H'×W'" if encoder.modality == "video" else "B×C×F'×T'",
        "file": file,
        "torchvision_arch": torchvision,
        "weights_convention": convention,
        "torchvision_class": encoder.torchvision_arch if torchvision else None,
        "torchvision_changes": encoder.torchvision_changes if torchvision else None,
        "num_parameters": sum(p.numel() for p in encoder.parameters()),
    }


def _encoders_of(ckpt: Mapping[str, Any], recipe: Mapping[str, Any], checkpoint: Path
                 ) -> tuple[dict[str, Encoder | None], dict[str, tuple[str, dict[str, Any]] | None]]:
    """The recipe's encoders with the checkpoint's weights (strict), and their (name, kwargs)."""
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise ExportError(f"{checkpoint} has no 'state_dict'")
    specs: dict[str, tuple[str, dict[str, Any]] | None] = {}
    for key in ENCODER_KEYS:
        try:
            specs[key] = encoder_spec(recipe["model"].get(key), key)
        except ValueError as error:
            raise ExportError(f"{checkpoint}: {error}") from None
        if specs[key] is not None and specs[key][0] not in _REGISTRIES[key]:
            raise ExportError(
                f"{checkpoint}: model.{key} is {specs[key][0]!r}, which is not in the registry "
                f"(known: {sorted(_REGISTRIES[key])})"
            )
    try:
        encoders = build_encoders(recipe["model"])._asdict()
    except (ValueError, TypeError) as error:
        raise ExportError(f"{checkpoint}: cannot build the encoders its recipe names: {error}") from None
    for key, encoder in encoders.items():
        if encoder is None:
            continue
        tensors = _sub_state_dict(state_dict, key + ".")
        if not tensors:
            raise ExportError(f"{checkpoint}: model.{key} names {specs[key][0]!r} "
                              f"but the state_dict has no '{key}.*' weights")
        load_state_strict(encoder, tensors, f"{checkpoint} ({key} = {specs[key][0]})")
    if all(e is None for e in encoders.values()):
        raise ExportError(f"{checkpoint}: the recipe names neither a video nor an audio encoder")
    return encoders, specs


# What an export folder may hold: replacing a folder with anything else in it would delete
# files that are not ours.
EXPORT_FILES = frozenset({MODEL_JSON, MODEL_CARD, *(f"{key}.safetensors" for key in ENCODER_KEYS)})


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: a file, not a folder")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            raise ExportError(f"--out {out_dir} holds files an export does not write ({', '.join(foreign[:5])}); "
                              "give a new folder or an earlier export folder")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """The complete export at ``staging`` becomes ``out_dir``; an earlier export there is
    replaced only now (two renames: a kill between them leaves it as ``.NAME.old.PID``)."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
    os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, license: str = DEFAULT_LICENSE,
                      evaluations: Sequence[str | Path] = ()) -> Path:
    """Write the encoders of an avssl Lightning checkpoint to ``out_dir`` as safetensors,
    ``model.json`` and a model card (``README.md``); returns ``out_dir``.

    The checkpoint is read by :func:`load_checkpoint` (``weights_only=True``, never pickle).
    The folder is built beside ``out_dir`` and renamed into place when complete, so an
    earlier export is never left half-overwritten. ``license`` goes into the card's front
    matter; ``evaluations`` are ``metrics.json`` files of evaluation verbs shown in the card.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    log.info("reading checkpoint %s", checkpoint)
    ckpt = load_checkpoint(checkpoint)
    recipe = checkpoint_recipe(ckpt, checkpoint)
    encoders, specs = _encoders_of(ckpt, recipe, checkpoint)
    _check_replaceable(out_dir)

    model_json: dict[str, Any] = {"format_version": FORMAT_VERSION}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()  # the default mode (0o777 less the umask), unlike tempfile.mkdtemp's 0o700
    try:
        for key in ENCODER_KEYS:
            if encoders[key] is None:
                model_json[key] = None
            else:
                name, kwargs = specs[key]  # type: ignore[misc]
                model_json[key] = _write_encoder(encoders[key], name, kwargs, key, staging)
        model_json["inputs"] = input_spec(recipe, encoders["video_encoder"] is not None,
                                          encoders["audio_encoder"] is not None)
        model_json["smoke"] = bool(recipe.get("smoke", False))
        model_json["recipe"] = recipe
        model_json["source_checkpoint"] = str(checkpoint.resolve())
        model_json["global_step"] = ckpt.get("global_step")
        model_json["epoch"] = ckpt.get("epoch")
        log.info("writing %s", MODEL_JSON)
        text = json.dumps(model_json, indent=2, ensure_ascii=False, default=_jsonable)
        (staging / MODEL_JSON).write_text(text + "\n", encoding="utf-8")
        log.info("writing %s (model card)", MODEL_CARD)
        card = model_card(model_json, pretext_metrics(checkpoint, ckpt.get("global_step")),
                          read_evaluations(evaluations), license)
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if model_json["smoke"]:
        log.warning("%s is a smoke export (smoke=true: 2 training steps at a shrunken input); not a trained model",
                    out_dir)
    log.info("exported %s", out_dir)
    return out_dir


# -- loading ------------------------------------------------------------------------------------
@dataclass
class PretrainedEncoders:
    """Encoders read back from an export folder (eval mode, on CPU unless asked).

    ``spec`` is the parsed model.json; ``video_view`` / ``audio_view`` / ``mel`` give its
    input windows as the data package's dataclasses, ready for a ``ViewSpec``.
    """

    video_encoder: Encoder | None
    audio_encoder: Encoder | None
    spec: dict[str, Any]

    @property
    def video_view(self) -> VideoView | None:
        return input_views(self.spec["inputs"]).video

    @property
    def audio_view(self) -> AudioView | None:
        return input_views(self.spec["inputs"]).audio

    @property
    def mel(self) -> MelSettings | None:
        return input_views(self.spec["inputs"]).mel


def _read_spec(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"export folder {directory} does not exist")
    path = directory / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not an avssl export folder (run `avssl export`)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from None
    version = spec.get("format_version") if isinstance(spec, dict) else None
    if version != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {version!r}, this avssl reads version {FORMAT_VERSION}")
    return spec


def _load_weights(directory: Path, key: str, entry: Mapping[str, Any], encoder: Encoder) -> None:
    path = directory / str(entry.get("file", ""))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (model.json lists it for {key})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ExportError(f"{path} is not a readable safetensors file: {error}") from None
    convention = entry.get("weights_convention", "avssl")
    if convention == "torchvision":
        if not isinstance(encoder, TorchvisionBackbone):
            raise ExportError(f"{path}: torchvision weights for {entry['name']!r}, "
                              "which does not wrap a torchvision model")
        load_state_strict(encoder.backbone, tensors, str(path))
    elif convention == "avssl":
        load_state_strict(encoder, tensors, str(path))
    else:
        raise ExportError(f"{directory / MODEL_JSON}: unknown weights_convention {convention!r} for {key}")


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> PretrainedEncoders:
    """Read an export folder written by :func:`export_checkpoint`.

    The encoders are built from the registry and loaded with ``strict=True``, in eval mode.
    Either is ``None`` where the task had no encoder for that modality.
    """
    directory = Path(directory)
    spec = _read_spec(directory)
    if spec.get("smoke"):
        log.warning("%s is a smoke export (2 training steps at a shrunken input), not a trained model", directory)
    model_config: dict[str, Any] = {}
    for key in ENCODER_KEYS:
        entry = spec.get(key)
        if entry is None:
            model_config[key] = None
            continue
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name not in _REGISTRIES[key]:
            raise ExportError(
                f"{directory / MODEL_JSON}: {key} {name!r} is not in this avssl's registry "
                f"(known: {sorted(_REGISTRIES[key])})"
            )
        model_config[key] = {"name": name, **(entry.get("kwargs") or {})}
    try:
        encoders = build_encoders(model_config)._asdict()
    except (ValueError, TypeError) as error:
        raise ExportError(f"{directory / MODEL_JSON}: cannot build the encoders it names: {error}") from None
    for key, encoder in encoders.items():
        if encoder is not None:
            _load_weights(directory, key, spec[key], encoder)
            encoders[key] = encoder.to(map_location).eval()
    return PretrainedEncoders(encoders["video_encoder"], encoders["audio_encoder"], spec)
