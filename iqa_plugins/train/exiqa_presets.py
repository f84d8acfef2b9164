"""ExIQA's training settings per data set, from the paper (``iqa-plugins train exiqa --preset NAME``).

Phase 1 prompt-tunes a pretrained CLIP ViT-B/32 (K visual prompt tokens: 100 for KADID-10k and TID2013, 15
for CSIQ and LIVE; cosine schedule with linear warm-up, peak 2e-3, 100 epochs of which 20 warm up) on the data
set's own distortions and attributes; on the paper's large multi-distortion set ("ExIQA set") the whole CLIP is
fine-tuned instead, without prompt tokens, for 5 epochs at 5e-5. Phase 2 trains the regressor for 100 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExIQAPreset:
    """What a preset fixes: the attribute set, the prompt token count and phase 1's mode, epochs and rate."""

    description: str
    attributes: str
    """Name of a shipped attribute set (``iqa_plugins.archs.exiqa_arch.ATTRIBUTE_SETS``)."""
    num_prompts: int
    mode: str
    phase1_epochs: int
    phase1_lr: float
    phase2_epochs: int = 100


PRESETS: dict[str, ExIQAPreset] = {
    "kadid10k": ExIQAPreset("KADID-10k: 25 distortions, 100 prompt tokens, 100 epochs at 2e-3",
                            "kadid10k", 100, "prompt", 100, 2e-3),
    "tid2013": ExIQAPreset("TID2013: 24 distortions, 100 prompt tokens, 100 epochs at 2e-3",
                           "tid2013", 100, "prompt", 100, 2e-3),
    "csiq": ExIQAPreset("CSIQ: 6 distortions, 15 prompt tokens, 100 epochs at 2e-3", "csiq", 15, "prompt", 100, 2e-3),
    "live": ExIQAPreset("LIVE: 5 distortions, 15 prompt tokens, 100 epochs at 2e-3", "live", 15, "prompt", 100, 2e-3),
    "exiqa-set": ExIQAPreset("the paper's multi-distortion set (iqa-plugins generate): whole CLIP fine-tuned, "
                             "no prompt tokens, 5 epochs at 5e-5, KADID-10k's 25 distortions",
                             "kadid10k", 0, "full", 5, 5e-5),
}
DEFAULT_PHASE1_EPOCHS = 100  # without a preset: the paper's prompt-tuning length
DEFAULT_PHASE2_EPOCHS = 100  # the paper's regressor training length


def get_preset(name: str) -> ExIQAPreset:
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
