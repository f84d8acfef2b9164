"""Auto-registration with pyiqa, checked in fresh interpreters as a user would meet it."""

import pytest

pytestmark = pytest.mark.slow  # each test starts an interpreter that imports pyiqa


def test_startup_imports_neither_torch_nor_pyiqa(fresh, python_cmd):
    code = (
        "import sys;"
        "hooked = any(type(f).__name__ == '_PyiqaImportHook' for f in sys.meta_path);"
        "print(hooked, 'torch' in sys.modules, 'pyiqa' in sys.modules)"
    )
    result = fresh([*python_cmd, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False"]


def test_import_pyiqa_registers_both_metrics(fresh, python_cmd):
    code = (
        "import pyiqa\n"
        "nr = pyiqa.list_models(metric_mode='NR')\n"
        "assert 'drexperts' in nr and 'exiqa' in nr, nr\n"
        "from pyiqa.utils.registry import ARCH_REGISTRY\n"
        "assert 'DRExperts' in ARCH_REGISTRY and 'ExIQA' in ARCH_REGISTRY\n"
        "from iqa_plugins import registration\n"
        "registration.register(); registration.register()  # idempotent\n"
        "assert pyiqa.list_models().count('drexperts') == 1\n"
        "print('ok')\n"
    )
    result = fresh([*python_cmd, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_autoload_can_be_disabled(fresh, python_cmd):
    code = "import pyiqa; print('drexperts' in pyiqa.list_models())"
    result = fresh([*python_cmd, "-c", code], env={"IQA_PLUGINS_NO_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_pyiqa_list_command_includes_plugin_metrics(fresh, console_script):
    result = fresh([console_script("pyiqa"), "-ls"])
    assert result.returncode == 0, result.stderr
    assert "'drexperts'" in result.stdout and "'exiqa'" in result.stdout
    for variant in ("drexperts-koniq", "drexperts-livec", "drexperts-spaq", "drexperts-flive", "drexperts-bid",
                    "exiqa-kadid", "exiqa-tid", "exiqa-csiq", "exiqa-live"):
        assert f"'{variant}'" in result.stdout


def test_registration_fails_loudly_on_incompatible_pyiqa(monkeypatch):
    from pyiqa.utils import registry

    from iqa_plugins import registration

    class OldRegistry:  # pyiqa < 0.1.16 had no lazy registration
        _obj_map: dict = {}

    monkeypatch.setattr(registry, "ARCH_REGISTRY", OldRegistry())
    with pytest.raises(registration.RegistrationError, match="register_lazy"):
        registration.register_archs()


def test_training_entry_point_is_declared():
    from importlib.metadata import entry_points

    targets = {ep.value for ep in entry_points(group="pyiqa.archs")}
    assert "iqa_plugins.registration:register_archs" in targets
