"""Both models resolve configs alike: a name, or overrides on a base, with the same errors for the same mistakes."""

from __future__ import annotations

import pytest

from iqa_plugins.archs import drexperts_arch, exiqa_arch


@pytest.mark.parametrize("arch", [drexperts_arch, exiqa_arch], ids=["drexperts", "exiqa"])
def test_names_overrides_and_errors(arch):
    small = arch.resolve_config("small")
    assert small == arch.CONFIGS["small"] and small is not arch.CONFIGS["small"]
    key = next(iter(small))
    small[key] = "changed"
    assert arch.CONFIGS["small"][key] != "changed"  # a copy: the table is never edited through it
    assert arch.resolve_config(None) == arch.resolve_config("paper") == arch.resolve_config({})
    assert arch.resolve_config({"base": "small"}) == arch.CONFIGS["small"]
    with pytest.raises(ValueError, match="config='huge'"):
        arch.resolve_config("huge")
    with pytest.raises(ValueError, match=r"unknown keys \['hiddden'\]"):
        arch.resolve_config({"base": "small", "hiddden": 3})
    with pytest.raises(TypeError, match="config must be a name or a dict, got int"):
        arch.resolve_config(3)
