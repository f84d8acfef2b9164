"""The thread/worker policy of scoring processes."""

from __future__ import annotations

import pytest

from iqa_plugins.runtime import plan_threads, quiet_openmp_waits


@pytest.mark.parametrize(
    "device, cores, threads, workers",
    [("cpu", 1, 1, 0), ("cpu", 2, 1, 1), ("cpu", 16, 15, 1), ("cuda", 2, 1, 1), ("cuda", 16, 1, 15)],
)
def test_defaults_split_the_cores(device, cores, threads, workers):
    plan = plan_threads(device, cores=cores)
    assert (plan.torch_threads, plan.workers, plan.warning) == (threads, workers, None)


def test_explicit_choice_is_kept_and_fills_the_rest():
    assert plan_threads("cpu", threads=3, cores=8).workers == 1
    plan = plan_threads("cpu", workers=3, cores=8)
    assert (plan.torch_threads, plan.workers) == (5, 3)


def test_oversubscription_is_warned_with_a_fitting_choice():
    plan = plan_threads("cpu", threads=2, workers=2, cores=2)
    assert (plan.torch_threads, plan.workers) == (2, 2)  # honoured
    assert "oversubscribe the 2 available core(s)" in plan.warning
    assert "--threads 1 with --workers 1" in plan.warning
    assert plan_threads("cuda", threads=4, workers=1, cores=2).warning is None  # torch waits on the GPU
    assert "oversubscribe" in plan_threads("cuda", workers=3, cores=2).warning


@pytest.mark.parametrize("threads, workers, message", [(0, None, "--threads must be >= 1"),
                                                        (None, -1, "--workers must be >= 0")])
def test_invalid_values_name_the_option(threads, workers, message):
    with pytest.raises(ValueError, match=message):
        plan_threads("cpu", threads=threads, workers=workers, cores=2)


def test_openmp_wait_policy_respects_the_users_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet_openmp_waits()
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    quiet_openmp_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_command_warns_and_refuses(fresh, console_script, tmp_path, write_photos):
    write_photos(tmp_path / "imgs", [(48, 64)] * 2)
    base = [console_script("iqa-plugins"), "score", str(tmp_path / "imgs"), "--metric", "piqe", "-q",
            "--batch-size", "1", "--device", "cpu"]
    warned = fresh([*base, "--threads", "64", "--workers", "1"])
    assert warned.returncode == 0, warned.stderr
    assert "warning: 64 torch thread(s) and 1 decoding worker(s) oversubscribe" in warned.stderr
    refused = fresh([*base, "--threads", "0"])
    assert refused.returncode == 2 and "--threads must be >= 1" in refused.stderr
    ray_only = fresh([*base, "--num-workers", "2", "--output", str(tmp_path / "s.csv")])
    assert ray_only.returncode == 2 and "--num-workers: only with --engine ray" in ray_only.stderr
    assert not (tmp_path / "s.csv").exists()
