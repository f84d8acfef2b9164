"""The plugin's metrics built without pyiqa: same scores and attributes as pyiqa.create_metric, no pyiqa import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from iqa_plugins.metric_factory import PluginMetric, create_metric


def test_drexperts_matches_pyiqa_create_metric(small_weights):
    import pyiqa

    ours = create_metric("drexperts", device="cpu", pretrained_model_path=str(small_weights), num_crops=2)
    theirs = pyiqa.create_metric("drexperts", device="cpu", pretrained_model_path=str(small_weights), num_crops=2)
    x = torch.rand(2, 3, 205, 263)  # awkward size: upscaled and cropped by the arch
    assert torch.equal(ours(x), theirs(x))
    for attribute in ("metric_name", "metric_mode", "lower_better", "score_range"):
        assert getattr(ours, attribute) == getattr(theirs, attribute)
    assert ours.net.num_crops == 2  # the caller's option overrides the registry's default


def test_exiqa_options_merge_as_in_pyiqa():
    import pyiqa

    torch.manual_seed(3)
    ours = create_metric("exiqa", device="cpu", pretrained=False, config="small")
    torch.manual_seed(3)
    theirs = pyiqa.create_metric("exiqa", device="cpu", pretrained=False, config="small")
    x = torch.rand(3, 3, 224, 240)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_input_checks_name_the_metric(small_weights):
    metric = PluginMetric("drexperts", device="cpu", pretrained_model_path=str(small_weights))
    with pytest.raises(ValueError, match=r"drexperts: input must be in \[0, 1\]"):
        metric(torch.rand(1, 3, 64, 64) * 2)
    with pytest.raises(ValueError, match=r"drexperts: expected a \(N, 3, H, W\) tensor"):
        metric(torch.rand(3, 64, 64))
    with pytest.raises(KeyError, match="unknown plugin metric 'topiq'"):
        PluginMetric("topiq", device="cpu")


def test_other_metrics_come_from_pyiqa():
    metric = create_metric("piqe", device="cpu")
    assert type(metric).__name__ == "InferenceModel" and metric.metric_name == "piqe"


def test_scoring_a_plugin_metric_never_imports_pyiqa(small_weights, tmp_path, write_photos):
    write_photos(tmp_path / "imgs", [(64, 80)])
    program = (
        "import sys, json\n"
        "from iqa_plugins.cli import main\n"
        f"status = main(['score', {str(tmp_path / 'imgs')!r}, '--metric', 'drexperts', '--metric-opt',"
        f" 'pretrained_model_path={small_weights}', '-o', {str(tmp_path / 's.csv')!r}, '-q'])\n"
        "print(json.dumps({'status': status, 'pyiqa': any(m.split('.')[0] == 'pyiqa' for m in sys.modules)}))\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"status": 0, "pyiqa": False}
    assert (tmp_path / "s.csv").read_text().count("\n") == 2  # header and the one image
