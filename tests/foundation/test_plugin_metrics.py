"""Both plugin metrics through pyiqa's API and through both commands, in fresh interpreters."""

import csv

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

# metric name -> (arch module, compact-checkpoint writer, default file name in pyiqa's cache)
MODELS = {
    "exiqa": ("iqa_plugins.archs.exiqa_arch", "save_pretrained", "ExIQA_kadid10k.pth"),
    "drexperts": ("iqa_plugins.archs.drexperts_arch", "save_pretrained", "DRExperts_koniq10k.pth"),
}
ARCHS = {"exiqa": ("iqa_plugins.archs.exiqa_arch", "ExIQA"), "drexperts": ("iqa_plugins.archs.drexperts_arch", "DRExperts")}


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng()
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _small_checkpoint(name: str, path) -> None:
    import importlib

    arch_module, arch = ARCHS[name]
    model = getattr(importlib.import_module(arch_module), arch)(pretrained=False, config="small").eval()
    writer_module, writer, _ = MODELS[name]
    getattr(importlib.import_module(writer_module), writer)(model, path)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_create_metric_in_fresh_interpreter(fresh, python_cmd, name, tmp_path):
    code = (
        "import pyiqa, torch\n"
        f"m = pyiqa.create_metric({name!r}, pretrained=False, config='small', device='cpu')\n"
        "s = m(torch.rand(2, 3, 96, 80))\n"
        "assert s.shape == (2, 1) and torch.isfinite(s).all(), s\n"
        f"loss = pyiqa.create_metric({name!r}, pretrained=False, config='small', as_loss=True, device='cpu')\n"
        "x = torch.randn(1, 3, 64, 64, requires_grad=True)\n"
        "loss(x).backward()\n"
        "assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0\n"
        "print('ok')\n"
    )
    result = fresh([*python_cmd, "-c", code], env={"TORCH_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_weights_missing_offline_is_explained(fresh, python_cmd, name, tmp_path):
    code = f"import pyiqa; pyiqa.create_metric({name!r}, device='cpu')"
    result = fresh([*python_cmd, "-c", code], env={"TORCH_HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "WeightsNotFoundError" in result.stderr
    assert MODELS[name][2] in result.stderr and str(tmp_path) in result.stderr


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pyiqa_command_uses_weights_from_the_cache(fresh, console_script, name, photos, tmp_path):
    cache = tmp_path / "home" / "hub" / "pyiqa"
    cache.mkdir(parents=True)
    _small_checkpoint(name, cache / MODELS[name][2])
    result = fresh([console_script("pyiqa"), name, "-t", str(photos), "--device", "cpu", "-v"],
                   env={"TORCH_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert "'mean'" in result.stdout and str(photos / "2.png") in result.stdout


@pytest.mark.parametrize("name", sorted(MODELS))
def test_score_command_explains(fresh, console_script, name, photos, tmp_path):
    weights = tmp_path / "w.pth"
    _small_checkpoint(name, weights)
    out = tmp_path / "scores.csv"
    result = fresh([console_script("iqa-plugins"), "score", str(photos), "--metric", name,
                    "--metric-opt", f"pretrained_model_path={weights}", "--explain", "--workers", "0",
                    "--batch-size", "2", "--device", "cpu", "-o", str(out)])
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3
    extra = [c for c in rows[0] if c not in ("path", name)]
    assert len(extra) >= 10 and all(c.startswith(f"{name}:") for c in extra)  # one column per distortion
    assert all(np.isfinite(float(r[c])) for r in rows for c in [name, *extra])
