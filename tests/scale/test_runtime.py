"""The thread/worker policy of scoring processes."""

from __future__ import annotations

import pytest

from iqa_plugins.runtime import bound_openmp_spin, plan_threads


@pytest.mark.parametrize(
    "device, cores, threads, workers",
    [("cpu", 1, 1, 0), ("cpu", 2, 2, 0), ("cpu", 3, 3, 0), ("cpu", 4, 3, 1), ("cpu", 16, 15, 1),
     ("cuda", 2, 1, 1), ("cuda", 16, 1, 15)],
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


def test_openmp_spin_is_bounded_unless_the_user_chose(monkeypatch):
    import os

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    bound_openmp_spin()
    assert os.environ["GOMP_SPINCOUNT"] == "1000" and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    bound_openmp_spin()
    assert os.environ["GOMP_SPINCOUNT"] == "50"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    bound_openmp_spin()
    assert "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_every_command_bounds_the_spin_before_it_runs(monkeypatch, capsys):
    import os

    from iqa_plugins.cli import main

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--version"]) == 0
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
