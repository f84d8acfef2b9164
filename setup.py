"""Build script: package layout, the compiled attribute scorer, and the pyiqa auto-activation hook.

`kernels/` installs as `iqa_plugins.kernels`; a top-level `kernels` package would collide with the
PyPI package of that name (imported by transformers).

Environment switches:
  IQA_PLUGINS_BUILD_CUDA=1   also compile the CUDA kernel of the attribute scorer (needs nvcc); without a
                             visible GPU and without TORCH_CUDA_ARCH_LIST it targets DEFAULT_CUDA_ARCHS
  IQA_PLUGINS_NO_EXT=1       skip the C++ extension (the pure-PyTorch reference is used instead)
"""

import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).parent
AUTOLOAD_PTH = "iqa_plugins_autoload.pth"
# One line, executed by `site` at interpreter start-up: it only installs a lazy import hook
# (no torch, no pyiqa); registration runs when the user first imports pyiqa.
AUTOLOAD_LINE = "import iqa_plugins._autoload as _m; _m.install()\n"
# A100 (sm_80) and H100/H200 (sm_90): torch's build asks the visible GPU for its architecture and fails
# without one (a build machine, a container build) unless TORCH_CUDA_ARCH_LIST names the targets.
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _packages() -> list[str]:
    plugin = ["iqa_plugins"] + [f"iqa_plugins.{p}" for p in find_packages("iqa_plugins")]
    kernels = ["iqa_plugins.kernels"] + [f"iqa_plugins.kernels.{p}" for p in find_packages("kernels")]
    return plugin + kernels


def _extensions() -> tuple[list, dict]:
    if os.environ.get("IQA_PLUGINS_NO_EXT") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    src = Path("kernels") / "attribute_scorer" / "csrc"
    sources = [str(src / "attribute_scorer.cpp")]
    extra = {"cxx": ["-O3", "-fopenmp"]}
    ext_cls = CppExtension
    if os.environ.get("IQA_PLUGINS_BUILD_CUDA") == "1":
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        sources.append(str(src / "attribute_scorer_cuda.cu"))
        extra["nvcc"] = ["-O3"]
        extra["cxx"].append("-DIQA_WITH_CUDA")
        ext_cls = CUDAExtension
    ext = ext_cls(
        name="iqa_plugins.kernels.attribute_scorer._C",
        sources=sources,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


class BuildPyWithAutoload(build_py):
    """Ship the one-line .pth that activates the plugin when pyiqa is imported."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / AUTOLOAD_PTH
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(AUTOLOAD_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / AUTOLOAD_PTH)]


class EditableWheelWithAutoload(editable_wheel):
    """`pip install -e` builds a wheel of finder files only; put the autoload .pth in it as well."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):  # noqa: ANN001
        files, mapping = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        # Named after "__editable__.*.pth" in sort order, so the editable finder is active first.
        (Path(unpacked_wheel) / AUTOLOAD_PTH).write_text(AUTOLOAD_LINE)
        return files, mapping


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithAutoload
cmdclass["editable_wheel"] = EditableWheelWithAutoload

setup(
    packages=_packages(),
    package_dir={"iqa_plugins": "iqa_plugins", "iqa_plugins.kernels": "kernels"},
    package_data={
        "iqa_plugins": ["archs/*.json", "train/recipes/*.yml"],
        "iqa_plugins.kernels": ["attribute_scorer/csrc/*"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
