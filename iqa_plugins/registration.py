"""The one place that touches pyiqa's registries.

`register()` adds the plugin's metrics to pyiqa's ``DEFAULT_CONFIGS`` (which ``create_metric``,
``list_models`` and the ``pyiqa`` command read before any registry lookup) and registers the arch
classes lazily in ``ARCH_REGISTRY`` (their modules import timm/open_clip, so they load only when a
metric is built). It is idempotent, and it raises instead of warning when it cannot do its job.
"""

from __future__ import annotations

from iqa_plugins.archs.pretrained_cfgs import DREXPERTS, EXIQA

# Arch name -> "module:Class"; the module is imported when pyiqa first builds the arch.
ARCHS: dict[str, str] = {
    "DRExperts": "iqa_plugins.archs.drexperts_arch:DRExperts",
    "ExIQA": "iqa_plugins.archs.exiqa_arch:ExIQA",
}

# pyiqa DEFAULT_CONFIGS entries, from the variant tables: "drexperts" (KonIQ-10k weights, MOS 0-100), "exiqa"
# (a sigmoid score in [0, 1]) and one "<metric>-<tag>" per trained variant. Score files take a loaded model's
# own range from its protocol (explanations.score_scale). Names avoid the substring "fid" (special-cased by pyiqa).
METRICS: dict[str, dict] = {**DREXPERTS.metric_entries(), **EXIQA.metric_entries()}


class RegistrationError(RuntimeError):
    """pyiqa's registries could not be extended (an incompatible pyiqa, usually)."""


def register_archs() -> None:
    """Register the arch classes lazily; also the target of the ``pyiqa.archs`` entry point."""
    try:
        from pyiqa.utils.registry import ARCH_REGISTRY
    except ImportError as error:
        raise RegistrationError(f"iqa_plugins needs pyiqa >= 0.1.16: {error}") from error
    if not hasattr(ARCH_REGISTRY, "register_lazy"):
        raise RegistrationError(
            "This pyiqa has no ARCH_REGISTRY.register_lazy (added in pyiqa 0.1.16); upgrade pyiqa."
        )
    for name, target in ARCHS.items():
        # Once the class itself is registered, leave it; otherwise (re)point the lazy entry.
        if name not in ARCH_REGISTRY._obj_map:
            ARCH_REGISTRY.register_lazy(name, target, override=True)


def route_input_check() -> None:
    """Let an arch with ``check_input`` (ours) check its own input instead of pyiqa's generic check, which
    crashes on empty or ``meta`` batches, refuses fp16 1.0 and checks nothing for a loss. Other metrics
    keep pyiqa's check unchanged."""
    from pyiqa.models.inference_model import InferenceModel

    original = InferenceModel.is_valid_input
    if getattr(original, "routes_to_arch", False):
        return

    def is_valid_input(self, x):
        check = getattr(self.net, "check_input", None)
        if x is None or check is None:
            return original(self, x)
        check(x, value_range=self.check_input_range, as_loss=self.as_loss)

    is_valid_input.routes_to_arch = True
    InferenceModel.is_valid_input = is_valid_input


def register() -> None:
    """Make ``pyiqa.create_metric`` / ``list_models`` / the ``pyiqa`` command know our metrics."""
    try:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS
    except ImportError as error:
        raise RegistrationError(f"iqa_plugins needs pyiqa >= 0.1.16: {error}") from error
    register_archs()
    route_input_check()
    for name, entry in METRICS.items():
        # Mutate in place: pyiqa's modules hold references to this very dict.
        DEFAULT_CONFIGS[name] = {**entry, "metric_opts": dict(entry["metric_opts"])}

