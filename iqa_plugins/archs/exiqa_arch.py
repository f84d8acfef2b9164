"""ExIQA: explainable no-reference IQA through distortion attributes (Kazemi Ranjbar & Fatemizadeh).

Pipeline, for an RGB image in [0, 1]:

1. Resize the short side to ``image_size`` (bicubic, antialiased) and take the central square (CLIP's own
   test-time crop), then CLIP's normalisation; or, with ``input="crops"``, ``num_crops`` crops of ``image_size``
   at the image's own resolution (seeded positions, centre crop for one), whose attribute probabilities are
   averaged. Why each: ``docs/design.md``.
2. CLIP image tower (open_clip) with ``num_prompts`` learnable visual prompt tokens inserted after the class
   token (shallow visual prompt tuning: only the transformer input carries them). With 0 tokens the tower is
   exactly open_clip's ``encode_image``.
3. Attribute probabilities P(a|I) = sigmoid(s <e, t_pos_a - t_neg_a>) (Eq. 6) and distortion probabilities
   P(d|I) = sum_a softmax_d(logits)_a P(a|I) (Eq. 7), by the compiled scorer
   ``iqa_plugins.kernels.attribute_scores`` (pure-PyTorch fallback). ``s`` is CLIP's ``logit_scale.exp()`` as
   loaded, fixed; e and t are L2-normalised CLIP embeddings; the 125 text features are encoded once and cached as
   buffers (never per batch).
4. Regressor on all 125 attribute probabilities: Linear-SELU-Dropout(0.2) twice (128 wide), Linear, then a
   sigmoid: the score lies in (0, 1), higher is better (the sigmoid and the plain Dropout: ``docs/design.md``).

Weights: ``pretrained=True`` loads ``ExIQA_kadid10k.pth`` (none published: train it), ``pretrained_model_path``
loads the project's compact checkpoint (``save_pretrained``) or pyiqa's ``{"params": state_dict}``.
``pretrained=False`` builds random prompts, attribute weights and regressor; CLIP is random too unless
``clip_pretrained="openai"`` (needs a download) or ``clip_weights_path`` (a local CLIP checkpoint) is given.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iqa_plugins.archs.clip_towers import create_clip, encode_prompts
from iqa_plugins.archs.configs import resolve_named_config
from iqa_plugins.archs.crops import crop_offsets, upscale_to_min_side
from iqa_plugins.archs.input_check import check_image_batch
from iqa_plugins.archs.pretrained_cfgs import EXIQA
from iqa_plugins.kernels import attribute_scores
from iqa_plugins.kernels.attribute_scorer import group_softmax
from iqa_plugins.weights import (
    WeightsNotFoundError,
    WeightsSpec,
    load_checkpoint,
    resolve_weights,
    save_checkpoint,
)

try:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
except ImportError as _error:  # pyiqa's build_network would hide this as a KeyError: fail loudly here
    raise ImportError(f"ExIQA needs open_clip_torch (pip install open_clip_torch): {_error}") from _error

__all__ = [
    "ATTRIBUTES_FILE",
    "ATTRIBUTE_SETS",
    "CHECKPOINT_FORMAT",
    "CONFIGS",
    "DEFAULT_WEIGHTS",
    "AttributeSet",
    "ExIQA",
    "clip_fingerprint",
    "attribute_set_path",
    "load_attribute_set",
    "resize_center_crop",
    "resolve_config",
    "save_pretrained",
]

ATTRIBUTES_FILE = Path(__file__).with_name("exiqa_attributes.json")
# The paper uses each data set's own distortions, each with its attributes: the shipped sets by data set name.
ATTRIBUTE_SETS: dict[str, Path] = {
    "kadid10k": ATTRIBUTES_FILE,
    "tid2013": Path(__file__).with_name("exiqa_attributes_tid2013.json"),
    "csiq": Path(__file__).with_name("exiqa_attributes_csiq.json"),
    "live": Path(__file__).with_name("exiqa_attributes_live.json"),
}
CHECKPOINT_FORMAT = "iqa_plugins.exiqa/1"

# The trained variants (KADID-10k by default, TID2013, CSIQ, LIVE) are rows of archs.pretrained_cfgs.EXIQA.
DEFAULT_WEIGHTS: WeightsSpec = EXIQA.variant().weights

# Named size configurations. "paper" is the paper's model; "small" is the same code at toy size, for tests and
# demos (a random tiny CLIP: no weights exist for it).
CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {
        "clip_model": "ViT-B-32-quickgelu",
        "clip_model_cfg": None,
        "image_size": 224,
        "num_prompts": 100,
        "hidden": 128,
        "dropout": 0.2,
        # How an image becomes CLIP input. "resize": short side to image_size, central square (CLIP's own
        # preprocessing, the paper's). "crops": num_crops crops of image_size at the image's own resolution,
        # their attribute probabilities averaged (the crops of iqa_plugins.archs.crops); for models that must
        # see pixel-level distortions at a small input size.
        "input": "resize",
        "num_crops": 1,
    },
    "small": {
        "clip_model": None,
        "clip_model_cfg": {
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        "image_size": 64,
        "num_prompts": 4,
        "hidden": 128,
        "dropout": 0.2,
        "input": "resize",
        "num_crops": 1,
    },
}
INPUT_PROTOCOLS = ("resize", "crops")
_TOKENIZER_MODEL = "ViT-B-32-quickgelu"  # OpenAI CLIP's BPE tokenizer (ships with open_clip: works offline)


# ------------------------------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class AttributeSet:
    """The distortions, their attribute phrases (grouped, 5 per distortion) and the two prompt templates."""

    positive_template: str
    negative_template: str
    distortion_numbers: tuple[int, ...]
    distortion_names: tuple[str, ...]
    distortion_slugs: tuple[str, ...]
    attributes: tuple[str, ...]
    group_index: tuple[int, ...]
    """Index (into the distortions) of each attribute's distortion."""
    levels: tuple[int, ...] = ()
    """Number of severity levels of each distortion (strength of level l = l / levels; default 5)."""

    @property
    def distortion_levels(self) -> tuple[int, ...]:
        return self.levels or (5,) * len(self.distortion_names)

    @property
    def num_distortions(self) -> int:
        return len(self.distortion_names)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def prompts(self) -> tuple[list[str], list[str]]:
        """Positive and negative prompts, one each per attribute."""
        pos = [self.positive_template.format(a=a) for a in self.attributes]
        neg = [self.negative_template.format(a=a) for a in self.attributes]
        return pos, neg

    def sha256(self) -> str:
        """Digest of everything the text features depend on (templates, phrases, grouping)."""
        blob = json.dumps([self.positive_template, self.negative_template, self.attributes, self.group_index])
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The form stored in checkpoints (and read back by :meth:`from_dict`)."""
        distortions = []
        for g, (number, name, slug) in enumerate(
            zip(self.distortion_numbers, self.distortion_names, self.distortion_slugs)
        ):
            phrases = [a for a, i in zip(self.attributes, self.group_index) if i == g]
            entry = {"number": number, "name": name, "slug": slug, "attributes": phrases}
            if self.distortion_levels[g] != 5:
                entry["levels"] = self.distortion_levels[g]
            distortions.append(entry)
        return {
            "templates": {"positive": self.positive_template, "negative": self.negative_template},
            "distortions": distortions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "attribute data") -> AttributeSet:
        try:
            templates = data["templates"]
            pos_t, neg_t = str(templates["positive"]), str(templates["negative"])
            entries = list(data["distortions"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: needs 'templates' {{positive, negative}} and 'distortions': {error}") from None
        for template in (pos_t, neg_t):
            if "{a}" not in template:
                raise ValueError(f"{source}: prompt template {template!r} has no '{{a}}' placeholder")
        if not entries:
            raise ValueError(f"{source}: 'distortions' is empty")
        numbers, names, slugs, attributes, groups, levels = [], [], [], [], [], []
        for g, entry in enumerate(entries):
            try:
                phrases = [str(p) for p in entry["attributes"]]
                numbers.append(int(entry["number"]))
                names.append(str(entry["name"]))
                slugs.append(str(entry["slug"]))
                levels.append(int(entry.get("levels", 5)))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"{source}: distortion #{g + 1} needs number, name, slug, attributes: {error}") from None
            if not phrases or any(not p.strip() for p in phrases):
                raise ValueError(f"{source}: distortion {names[-1]!r} has an empty attribute list or phrase")
            attributes += phrases
            groups += [g] * len(phrases)
        for label, values in (("names", names), ("slugs", slugs), ("numbers", numbers)):
            if len(set(values)) != len(values):
                raise ValueError(f"{source}: distortion {label} are not unique")
        if any(n < 1 for n in levels):
            raise ValueError(f"{source}: a distortion's 'levels' must be >= 1")
        return cls(pos_t, neg_t, tuple(numbers), tuple(names), tuple(slugs), tuple(attributes), tuple(groups),
                   tuple(levels))


def attribute_set_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped attribute set (``ATTRIBUTE_SETS``: kadid10k, tid2013, csiq, live) or a path."""
    if str(name_or_path) in ATTRIBUTE_SETS:
        return ATTRIBUTE_SETS[str(name_or_path)]
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ValueError(f"attributes {str(name_or_path)!r}: neither a shipped set ({', '.join(ATTRIBUTE_SETS)}) "
                         "nor an existing file")
    return path


def load_attribute_set(path: str | os.PathLike = ATTRIBUTES_FILE) -> AttributeSet:
    """Read an attribute set: a shipped set's name (see ``ATTRIBUTE_SETS``) or a file (the default,
    ``exiqa_attributes.json``, holds the 25 KADID-10k distortions x 5 attributes)."""
    path = attribute_set_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"attributes file {str(path)!r} could not be read: {error}") from error
    return AttributeSet.from_dict(data, source=f"attributes file {str(path)!r}")


# ---------------------------------------------------------------------------------------------------- configs


def resolve_config(config: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A full config dict from a name ("paper", "small") or a dict of overrides (key "base" names the start)."""
    resolved = resolve_named_config(config, CONFIGS, "ExIQA")
    if resolved["input"] not in INPUT_PROTOCOLS:
        raise ValueError(f"config input={resolved['input']!r}: choose one of {INPUT_PROTOCOLS}")
    if not isinstance(resolved["num_crops"], int) or resolved["num_crops"] < 1:
        raise ValueError(f"config num_crops must be an int >= 1, got {resolved['num_crops']!r}")
    if (resolved["clip_model"] is None) == (resolved["clip_model_cfg"] is None):
        raise ValueError("config needs exactly one of clip_model (an open_clip name) and clip_model_cfg (a dict)")
    if int(resolved["num_prompts"]) < 0:
        raise ValueError(f"config num_prompts must be >= 0, got {resolved['num_prompts']}")
    tower_size = (resolved["clip_model_cfg"] or {}).get("vision_cfg", {}).get("image_size")
    if tower_size is not None and tower_size != resolved["image_size"]:
        raise ValueError(f"config image_size={resolved['image_size']} differs from the image tower's "
                         f"clip_model_cfg.vision_cfg.image_size={tower_size}")
    return resolved


# ------------------------------------------------------------------------------------------------------- CLIP


def clip_fingerprint(clip: nn.Module) -> str:
    """SHA-256 of a CLIP model's parameters and persistent buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict from an open_clip checkpoint (plain or under "state_dict") or an OpenAI TorchScript file."""
    try:
        data = load_checkpoint(path)
    except RuntimeError as safe_error:
        # OpenAI's released ViT-B-32.pt is a TorchScript archive: not a pickle, so weights_only cannot read
        # it; torch.jit.load runs TorchScript only (no arbitrary Python).
        try:
            data = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise safe_error from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"clip_weights_path={str(path)!r}: not a CLIP state dict")
    state = {k.removeprefix("module."): v for k, v in data.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # metadata entries in OpenAI's files
        state.pop(key, None)
    return state


def _build_clip(config: Mapping[str, Any], clip_pretrained: str | None, clip_weights_path: str | None) -> nn.Module:
    """The CLIP of ``config``: random, from open_clip's pretrained tag (downloads), or from a local file."""
    name = config["clip_model"]
    if clip_weights_path is not None:
        path = Path(clip_weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"clip_weights_path={str(clip_weights_path)!r}: no such file")
        clip = _build_clip(config, None, None)
        try:
            clip.load_state_dict(_read_clip_state_dict(path), strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"clip_weights_path={str(path)!r} does not fit CLIP {name or 'custom config'}: {error}"
            ) from error
        return clip
    if name is None:
        if clip_pretrained is not None:
            raise ValueError(f"clip_pretrained={clip_pretrained!r} needs an open_clip model name, not a custom config")
        return create_clip(config["clip_model_cfg"])
    if clip_pretrained is None:
        return create_clip(name)
    try:
        return create_clip(name, pretrained=clip_pretrained)
    except Exception as error:  # hub/network/cache errors come in many types; all mean "weights unavailable"
        raise WeightsNotFoundError(
            f"CLIP weights {name!r} / pretrained={clip_pretrained!r} could not be loaded through open_clip "
            f"({type(error).__name__}: {error}). Offline, supply them as a local file: "
            f"clip_weights_path=PATH to an open_clip or OpenAI CLIP checkpoint of {name} (e.g. OpenAI's "
            "ViT-B-32.pt, or open_clip_pytorch_model.bin of timm/vit_base_patch32_clip_224.openai), or put them "
            "in the Hugging Face cache (HF_HOME) on a machine with network access."
        ) from error


def _choose_clip(
    cfg: Mapping[str, Any],
    compact: Mapping[str, Any] | None,
    params_checkpoint: bool,
    source: str | None,
    clip_pretrained: str | None,
    clip_weights_path: str | None,
) -> tuple[nn.Module, str | None, bool]:
    """ExIQA's CLIP, from the first of these sources that applies: (1) pyiqa's ``{"params"}`` checkpoint
    (``params_checkpoint``) holds the whole CLIP, so a random one is built for it to overwrite; (2) weights given
    explicitly (``clip_weights_path`` and/or ``clip_pretrained``; with both, the file is used and the tag
    records what it holds); (3) a compact checkpoint's own CLIP state dict; (4) the open_clip pretrained tag a
    compact checkpoint names; (5) without any of these, a random CLIP on purpose.

    Returns the CLIP, its pretrained tag (None if none) and whether it is exactly the pretrained weights.
    """
    if params_checkpoint:
        return _build_clip(cfg, None, None), None, False
    explicit = clip_weights_path is not None or clip_pretrained is not None
    if compact is not None and not explicit:
        clip_tag = compact["clip"].get("pretrained")
        if "clip_state_dict" in compact:
            clip = _build_clip(cfg, None, None)
            clip.load_state_dict(compact["clip_state_dict"], strict=True)
            return clip, clip_tag, False
        if clip_tag is None:
            raise ValueError(f"checkpoint {source!r} has neither CLIP weights nor an open_clip pretrained tag")
        return _build_clip(cfg, clip_tag, None), clip_tag, True
    clip = _build_clip(cfg, None if clip_weights_path else clip_pretrained, clip_weights_path)
    return clip, clip_pretrained, clip_pretrained is not None


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): short side to ``size`` (bicubic, antialiased), then the central square.

    Differentiable; a no-op resize when the short side already is ``size``. Data sets may apply it ahead of
    time (it is idempotent), which lets images of different sizes share a batch.
    """
    h, w = x.shape[-2:]
    if min(h, w) != size:
        ratio = size / min(h, w)
        h, w = max(size, round(h * ratio)), max(size, round(w * ratio))
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


# ------------------------------------------------------------------------------------------------------ model


def _read_checkpoint(pretrained: bool | str, path: str | None) -> tuple[dict | None, str | None]:
    """The checkpoint to load (``path``, else the variant's file; none with ``pretrained=False`` and no path)
    and its name for messages; it must be a compact ExIQA checkpoint or pyiqa's ``{"params": ...}``."""
    if path is None and not pretrained:
        return None, None
    weights = EXIQA.variant(pretrained or True).weights
    checkpoint = load_checkpoint(resolve_weights(weights, path))
    source = str(path or weights.filename)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {source!r} is not a dict")
    if checkpoint.get("format") != CHECKPOINT_FORMAT and "params" not in checkpoint:
        raise ValueError(
            f"checkpoint {source!r} is neither an ExIQA checkpoint (format {CHECKPOINT_FORMAT!r}) nor pyiqa's "
            f"{{'params': state_dict}}; its top-level keys: {sorted(map(str, checkpoint))[:10]}"
        )
    return checkpoint, source


def _config_and_attributes(
    compact: Mapping[str, Any] | None, source: str | None, config: str | Mapping[str, Any] | None,
    num_prompts: int | None, attributes_path: str | None,
) -> tuple[dict[str, Any], AttributeSet]:
    """The model's config and attribute set: a compact checkpoint's own (an explicit, different ``config`` or
    ``num_prompts`` is an error), else ``config`` with ``num_prompts`` applied and the attribute file."""
    if compact is None:
        base = resolve_config(config)
        cfg = resolve_config({**base, "num_prompts": int(num_prompts)}) if num_prompts is not None else base
        return cfg, load_attribute_set(attributes_path or ATTRIBUTES_FILE)
    cfg = resolve_config(compact["config"])
    if config is not None and resolve_config(config) != cfg:
        raise ValueError(f"config={config!r} differs from the config stored in checkpoint {source!r}")
    if num_prompts is not None and int(num_prompts) != cfg["num_prompts"]:
        raise ValueError(f"num_prompts={num_prompts} differs from the {cfg['num_prompts']} of checkpoint {source!r}")
    return cfg, AttributeSet.from_dict(compact["attributes"], source=f"checkpoint {source!r}")


class ExIQA(nn.Module):
    """ExIQA metric arch (pyiqa convention: ``forward(x)`` on RGB in [0, 1] -> (N, 1) score, higher better).

    Args:
        pretrained: load the default checkpoint ``ExIQA_kadid10k.pth`` (from pyiqa's cache; none is published,
            so this raises WeightsNotFoundError saying how to train it); a data set name ("tid2013") or variant
            tag ("tid"): that variant's file (see ``archs.pretrained_cfgs.EXIQA``). False: random weights on purpose.
        pretrained_model_path: a checkpoint to load (the compact ``iqa_plugins.exiqa/1`` format, or pyiqa's
            ``{"params": state_dict}``); used whatever ``pretrained`` says.
        config: "paper" (ViT-B/32, 100 prompt tokens), "small" (tiny CLIP, same code) or a dict of overrides
            with optional "base". With a compact checkpoint the checkpoint's config is used; a different explicit
            config is an error.
        num_prompts: shortcut to override the config's prompt token count (0 = plain CLIP).
        clip_pretrained: open_clip pretrained tag for CLIP when no checkpoint is loaded (e.g. "openai"; needs
            the download) or to override a checkpoint's record; None: random CLIP (with pretrained=False).
        clip_weights_path: a local CLIP checkpoint (open_clip or OpenAI file) used instead of a download.
        attributes_path: attribute file for a model without checkpoint (default: the project's 125 attributes).
        top_k: default number of top distortions and attributes ``explain`` lists.
    """

    def __init__(
        self,
        pretrained: bool | str = True,
        pretrained_model_path: str | None = None,
        config: str | Mapping[str, Any] | None = None,
        *,
        num_prompts: int | None = None,
        clip_pretrained: str | None = None,
        clip_weights_path: str | None = None,
        attributes_path: str | None = None,
        top_k: int = 3,
    ) -> None:
        super().__init__()
        checkpoint, source = _read_checkpoint(pretrained, pretrained_model_path)
        compact = checkpoint is not None and checkpoint.get("format") == CHECKPOINT_FORMAT
        self.config, self.attribute_set = _config_and_attributes(
            checkpoint if compact else None, source, config, num_prompts, attributes_path)
        self.top_k = int(top_k)
        self.metadata: dict[str, Any] = dict(checkpoint.get("metadata") or {}) if compact else {}
        self._build_clip(checkpoint if compact else None, checkpoint is not None and not compact, source,
                         clip_pretrained, clip_weights_path)
        self._build_head()
        if compact:
            self._load_compact(checkpoint, source)
        elif checkpoint is not None:
            self.load_state_dict(checkpoint["params"], strict=True)
            self.clip_sha256 = clip_fingerprint(self.clip)
            self.text_meta = {"prompts_sha256": self.attribute_set.sha256(), "clip_sha256": self.clip_sha256}
        else:
            self.refresh_text_features()
        self._clip_sha256_as_loaded = self.clip_sha256 if self._pristine_clip else None

    def _build_clip(self, compact: Mapping[str, Any] | None, params_checkpoint: bool, source: str | None,
                    clip_pretrained: str | None, clip_weights_path: str | None) -> None:
        """The frozen CLIP (see :func:`_choose_clip`), what it came from, and its logit scale."""
        self.clip, clip_tag, self._pristine_clip = _choose_clip(
            self.config, compact, params_checkpoint, source, clip_pretrained, clip_weights_path)
        self.clip_source = {
            "model": self.config["clip_model"],
            "pretrained": clip_tag,
            "weights_file": None if clip_weights_path is None else str(clip_weights_path),
        }
        for p in self.clip.parameters():
            p.requires_grad_(False)  # phase 1 (full fine-tuning) unfreezes explicitly
        self.scale = float(self.clip.logit_scale.detach().exp())

    def _build_head(self) -> None:
        """Prompt tokens, attribute weights, text feature buffers and the regressor, sized by CLIP and the
        attribute set."""
        width = self.clip.visual.class_embedding.shape[-1]
        embed_dim = self.clip.visual.output_dim
        k = int(self.config["num_prompts"])
        self.prompt_tokens = nn.Parameter(torch.randn(k, width) * width**-0.5) if k else None

        attribute_set = self.attribute_set
        num_attr = attribute_set.num_attributes
        self.register_buffer("group_index", torch.tensor(attribute_set.group_index, dtype=torch.long))
        self.weight_logits = nn.Parameter(torch.zeros(num_attr))  # uniform convex weights to start
        self.register_buffer("text_pos", torch.zeros(num_attr, embed_dim))
        self.register_buffer("text_neg", torch.zeros(num_attr, embed_dim))
        self.register_buffer("text_diff", torch.zeros(num_attr, embed_dim))
        self.regressor = _make_regressor(num_attr, int(self.config["hidden"]), float(self.config["dropout"]))
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self._num_distortions = attribute_set.num_distortions
        self._prompt_ids: torch.Tensor | None = None
        # The scale follows CLIP's logit_scale whenever a state dict is loaded into the arch.
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_scale())

    # ------------------------------------------------------------------------------------------ weights

    def _refresh_scale(self) -> None:
        self.scale = float(self.clip.logit_scale.detach().exp())

    def _load_compact(self, checkpoint: Mapping[str, Any], source: str) -> None:
        fingerprint = clip_fingerprint(self.clip)
        stored = checkpoint["text_features"]
        if stored.get("clip_sha256") != fingerprint:
            raise ValueError(
                f"checkpoint {source!r}: its cached text features were computed with other CLIP weights "
                f"(stored sha256 {str(stored.get('clip_sha256'))[:12]}..., loaded CLIP {fingerprint[:12]}...); "
                "load the CLIP they were made with (clip_weights_path / clip_pretrained) or save the checkpoint "
                "with its CLIP state dict"
            )
        if stored.get("prompts_sha256") != self.attribute_set.sha256():
            raise ValueError(f"checkpoint {source!r}: cached text features do not match its attribute prompts")
        missing, unexpected = self.load_state_dict(checkpoint["state_dict"], strict=False)
        head_missing = [k for k in missing if not k.startswith(("clip.", "text_"))]
        if head_missing or unexpected:
            raise ValueError(f"checkpoint {source!r}: state_dict missing {head_missing}, unexpected {unexpected}")
        with torch.no_grad():
            self.text_pos.copy_(stored["positive"])
            self.text_neg.copy_(stored["negative"])
            self.text_diff.copy_(stored["difference"])
        self.clip_sha256 = fingerprint
        self.text_meta = {"prompts_sha256": stored["prompts_sha256"], "clip_sha256": fingerprint}
        self._refresh_scale()

    @torch.no_grad()
    def refresh_text_features(self) -> None:
        """Encode the 2 x 125 prompts with the current CLIP and cache them (after CLIP changed, e.g. fine-tuning)."""
        pos, neg = self.encode_attribute_text()
        self.text_pos.copy_(pos)
        self.text_neg.copy_(neg)
        self.text_diff.copy_(pos - neg)
        self.clip_sha256 = clip_fingerprint(self.clip)
        self.text_meta = {"prompts_sha256": self.attribute_set.sha256(), "clip_sha256": self.clip_sha256}

    def encode_attribute_text(self, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (A, D) features of the positive and negative prompts (differentiable in CLIP's text tower)."""
        if self._prompt_ids is None:  # building the BPE tokenizer takes seconds: tokenise once per model
            pos_prompts, neg_prompts = self.attribute_set.prompts()
            self._prompt_ids = open_clip.get_tokenizer(_TOKENIZER_MODEL)(pos_prompts + neg_prompts)
        ids = self._prompt_ids.to(self.text_pos.device)
        feats = torch.cat([encode_prompts(self.clip, part) for part in ids.split(chunk)])
        feats = feats.to(self.text_pos.dtype)
        num_attr = self.attribute_set.num_attributes
        return feats[:num_attr], feats[num_attr:]

    # -------------------------------------------------------------------------------------------- forward

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attribute_set.attributes)

    @property
    def distortion_names(self) -> list[str]:
        return list(self.attribute_set.distortion_names)

    def check_input(self, x: Any, *, value_range: bool = True, as_loss: bool = False) -> torch.Tensor:
        """The metric's input check (pyiqa's is routed here): see ``archs.input_check``."""
        return check_image_batch(x, "ExIQA", value_range=value_range, as_loss=as_loss)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1 or 3, H, W) RGB in [0, 1] -> CLIP-normalised views (V, N, 3, S, S) under the config's input
        protocol: V = 1 resized central square ("resize"), or V = num_crops crops ("crops"; V = 1 for an
        image that is exactly one crop)."""
        x = check_image_batch(x, "ExIQA").to(self.pixel_mean.dtype)
        size = int(self.config["image_size"])
        if self.config["input"] == "resize":
            views = resize_center_crop(x, size)[None]
        elif x.shape[-2:] == (size, size):  # a crop already (training feeds them): every crop would be itself
            views = x[None]
        else:
            x = upscale_to_min_side(x, size)
            offsets = crop_offsets(x.shape[-2], x.shape[-1], size, int(self.config["num_crops"]), seed=0)
            views = torch.stack([x[..., top : top + size, left : left + size] for top, left in offsets])
        return (views - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (N, D) of preprocessed pixels, with the visual prompt tokens after CLS."""
        visual = self.clip.visual
        tokens = visual._embeds(pixels)
        k = 0 if self.prompt_tokens is None else self.prompt_tokens.shape[0]
        if k:
            prompts = self.prompt_tokens.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        tokens = visual.transformer(tokens)
        if k:  # drop the prompt outputs so that any pooling sees the stock token layout
            tokens = torch.cat([tokens[:, :1], tokens[:, 1 + k :]], dim=1)
        pooled, _ = visual._pool(tokens)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def attribute_outputs(
        self, x: torch.Tensor, text_diff: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """P(a|I) (N, 125) and P(d|I) (N, 25) for RGB input x; ``text_diff`` overrides the cached text features
        (full fine-tuning passes freshly encoded ones so that gradients reach the text tower)."""
        views = self.preprocess(x)
        emb = self.encode_image(views.flatten(0, 1))
        diff = self.text_diff if text_diff is None else text_diff
        weight_logits = self.weight_logits.to(emb.dtype)
        attr, dist = attribute_scores(
            emb, diff.to(emb.dtype), None, self.scale, self.group_index, weight_logits, self._num_distortions,
            normalize=True,
        )
        # P(d|I) is linear in P(a|I): averaging both over the views keeps Eq. 7 exact for the averages.
        return attr.unflatten(0, views.shape[:2]).mean(0), dist.unflatten(0, views.shape[:2]).mean(0)

    def score_from_attributes(self, attr_probs: torch.Tensor) -> torch.Tensor:
        """Quality in (0, 1), (N, 1), from the attribute probabilities."""
        return torch.sigmoid(self.regressor(attr_probs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attr, _ = self.attribute_outputs(x)
        return self.score_from_attributes(attr)

    def attribute_weights(self) -> torch.Tensor:
        """(125,) convex weights w_ad: softmax of the logits within each distortion's attributes."""
        return group_softmax(self.weight_logits, self.group_index, self._num_distortions)

    def score_scale(self) -> dict[str, Any]:
        """Scale of the scores (``iqa_plugins.explanations``): the regressor's sigmoid gives (0, 1), the training
        MOS normalised to [0, 1]; a checkpoint may say what its training labels were ("score_meaning" in its
        metadata)."""
        meaning = self.metadata.get("score_meaning") or "predicted quality: the training MOS normalised to [0, 1]"
        return {"score_range": [0.0, 1.0], "lower_better": False, "meaning": str(meaning)}

    def explain(self, x: torch.Tensor, top_k: int | None = None) -> dict[str, Any]:
        """Score and its explanation under the forward protocol (keys shared with DR.Experts: see
        ``iqa_plugins.explanations``; wrap in ``torch.no_grad()`` for inference).

        Returns, besides the shared keys (``score``, ``scale``, ``distortion_names`` = the 25 distortions,
        ``per_distortion`` = P(d|I), ``top_indices``, ``top_distortions`` = (name, P(d|I)) for at most
        ``top_k`` distortions with P(d|I) >= ``absent_threshold``, so none for an image judged clean):
        "distortion_probs" (N, 25) P(d|I) (Eq. 7, the predicted strength of each distortion); "attribute_probs"
        (N, 125) P(a|I) (Eq. 6), the regressor's inputs (Eq. 9); "attribute_names" their phrases;
        "attribute_distortions" each attribute's distortion (index into distortion_names);
        "attribute_weights" (125,) w_ad, each distortion's convex weights over its attributes; "top_attributes"
        per image a list of (phrase, distortion name, P(a|I)), most likely first, at most ``top_k``, absent
        ones (below the threshold) left out; "absent_threshold" 0.1 (Eq. 10: strengths below 0.1 are level 0).
        """
        from iqa_plugins.explanations import ABSENT_THRESHOLD

        attr, dist = self.attribute_outputs(x)
        score = self.score_from_attributes(attr).squeeze(1)
        k = max(1, min(self.top_k if top_k is None else int(top_k), dist.shape[1]))
        top_idx = dist.topk(k, dim=1).indices
        names = self.distortion_names
        attr_names = self.attribute_names
        groups = self.attribute_set.group_index
        dist_rows, attr_rows = dist.detach().float().tolist(), attr.detach().float().tolist()
        top_attr_idx = attr.topk(min(k, attr.shape[1]), dim=1).indices.tolist()
        return {
            "score": score,
            "scale": self.score_scale(),
            "distortion_names": names,
            "per_distortion": {name: dist[:, g] for g, name in enumerate(names)},
            "top_indices": top_idx,
            "top_distortions": [
                [(names[i], row[i]) for i in idx if row[i] >= ABSENT_THRESHOLD]
                for idx, row in zip(top_idx.tolist(), dist_rows)
            ],
            "distortion_probs": dist,
            "attribute_probs": attr,
            "attribute_names": attr_names,
            "attribute_distortions": list(groups),
            "attribute_weights": self.attribute_weights(),
            "top_attributes": [
                [(attr_names[i], names[groups[i]], row[i]) for i in idx if row[i] >= ABSENT_THRESHOLD]
                for idx, row in zip(top_attr_idx, attr_rows)
            ],
            "absent_threshold": ABSENT_THRESHOLD,
        }

    # ------------------------------------------------------------------------------------------- training

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained parts besides CLIP: prompt tokens, attribute weight logits, regressor."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("clip.", "text_"))}

    def clip_is_as_loaded(self) -> bool:
        """True when CLIP still holds the pretrained weights it was built from (so a checkpoint may name them)."""
        return self._clip_sha256_as_loaded is not None and clip_fingerprint(self.clip) == self._clip_sha256_as_loaded


def _make_regressor(num_inputs: int, hidden: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = num_inputs
    for _ in range(2):
        linear = nn.Linear(width, hidden)
        # LeCun-normal weights, as SELU's self-normalisation assumes.
        nn.init.normal_(linear.weight, std=width**-0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.SELU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def save_pretrained(
    model: ExIQA,
    path: str | os.PathLike,
    *,
    include_clip: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the compact format ``iqa_plugins.exiqa/1`` (atomically).

    The file holds the config, the attribute set, the head (prompt tokens, attribute weight logits,
    regressor), the cached text features (normalised positive and negative, their difference, the prompts'
    SHA-256 and the SHA-256 of the CLIP that encoded them) and which CLIP that is: the open_clip model and
    pretrained tag, plus CLIP's state dict when ``include_clip`` (default: whenever CLIP is not exactly the
    pretrained weights it was loaded from, i.e. random or fine-tuned). ``metadata`` (plain values) is stored
    under "metadata".
    """
    if include_clip is None:
        include_clip = not model.clip_is_as_loaded()
    fingerprint = clip_fingerprint(model.clip)
    if model.text_meta["clip_sha256"] != fingerprint:
        raise ValueError(
            "save_pretrained: CLIP changed since the text features were encoded; call model.refresh_text_features()"
        )
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "config": copy.deepcopy(model.config),
        "attributes": model.attribute_set.to_dict(),
        "clip": {
            "model": model.config["clip_model"],
            "pretrained": model.clip_source["pretrained"],
            "sha256": fingerprint,
            "logit_scale": model.scale,
        },
        "text_features": {
            "positive": model.text_pos.detach().cpu().clone(),
            "negative": model.text_neg.detach().cpu().clone(),
            "difference": model.text_diff.detach().cpu().clone(),
            "prompts_sha256": model.text_meta["prompts_sha256"],
            "clip_sha256": fingerprint,
        },
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.head_state_dict().items()},
    }
    if include_clip:
        checkpoint["clip_state_dict"] = {k: v.detach().cpu().clone() for k, v in model.clip.state_dict().items()}
    if metadata:
        checkpoint["metadata"] = dict(metadata)
    return save_checkpoint(checkpoint, path)
