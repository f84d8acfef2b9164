"""Checkpoint resolution, verified atomic downloads and safe loading."""

import hashlib

import pytest
import torch

from iqa_plugins import weights
from iqa_plugins.weights import ChecksumError, WeightsNotFoundError, WeightsSpec


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "pyiqa"


def _checkpoint_file(path, payload=None):
    payload = payload if payload is not None else {"w": torch.randn(3, 4)}
    torch.save(payload, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_follows_torch_home(isolated_cache):
    assert weights.cache_dir() == isolated_cache


def test_explicit_path_wins_and_missing_path_is_named(tmp_path):
    path, _ = _checkpoint_file(tmp_path / "mine.pth")
    spec = WeightsSpec("model.pth")
    assert weights.resolve_weights(spec, path) == path
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.resolve_weights(spec, tmp_path / "nope.pth")


def test_bare_file_name_is_found_in_the_cache(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = WeightsSpec("model.pth")
    isolated_cache.mkdir(parents=True)
    cached, _ = _checkpoint_file(isolated_cache / "DRExperts_koniq10k.pth")
    assert weights.resolve_weights(spec, "DRExperts_koniq10k.pth") == cached
    here, _ = _checkpoint_file(tmp_path / "DRExperts_koniq10k.pth")  # the current folder comes first
    assert weights.resolve_weights(spec, "DRExperts_koniq10k.pth").resolve() == here
    with pytest.raises(FileNotFoundError, match=r"current folder .* nor in the pyiqa cache .*hub/pyiqa"):
        weights.resolve_weights(spec, "other.pth")
    with pytest.raises(FileNotFoundError, match="looked only at that path"):
        weights.resolve_weights(spec, str(tmp_path / "sub" / "DRExperts_koniq10k.pth"))


def test_cached_file_is_used(isolated_cache):
    isolated_cache.mkdir(parents=True)
    path, _ = _checkpoint_file(isolated_cache / "model.pth")
    assert weights.resolve_weights(WeightsSpec("model.pth")) == path


def test_nothing_available_offline_says_what_where_and_how(isolated_cache):
    spec = WeightsSpec("model.pth", how_to_make="iqa-plugins train model")
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights(spec)
    message = str(info.value)
    assert "model.pth" in message
    assert str(isolated_cache) in message
    assert "iqa-plugins train model" in message
    assert "pretrained_model_path" in message


def test_download_is_verified_and_atomic(tmp_path, isolated_cache):
    source, digest = _checkpoint_file(tmp_path / "remote.pth")
    spec = WeightsSpec("model.pth", url=source.as_uri(), sha256=digest)
    got = weights.resolve_weights(spec)
    assert got == isolated_cache / "model.pth"
    assert got.read_bytes() == source.read_bytes()
    assert [p.name for p in isolated_cache.iterdir()] == ["model.pth"]  # no partial files left


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, isolated_cache):
    source, digest = _checkpoint_file(tmp_path / "remote.pth")
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    spec = WeightsSpec("model.pth", url=source.as_uri(), sha256=wrong)
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        weights.resolve_weights(spec)
    assert not any(isolated_cache.iterdir())


def test_url_without_checksum_is_not_downloaded(tmp_path, isolated_cache):
    source, _ = _checkpoint_file(tmp_path / "remote.pth")
    with pytest.raises(WeightsNotFoundError, match="SHA-256"):
        weights.resolve_weights(WeightsSpec("model.pth", url=source.as_uri()))
    assert not (isolated_cache / "model.pth").exists()


def test_failed_download_is_reported(tmp_path):
    spec = WeightsSpec("model.pth", url=(tmp_path / "absent.pth").as_uri(), sha256="0" * 64)
    with pytest.raises(WeightsNotFoundError, match="downloading"):
        weights.resolve_weights(spec)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_load_checkpoint_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pth"):
        weights.load_checkpoint(path)


def test_load_checkpoint_round_trip_and_atomic_save(tmp_path):
    payload = {"state_dict": {"w": torch.randn(5)}, "config": {"depth": 2, "name": "small"}}
    path = weights.save_checkpoint(payload, tmp_path / "sub" / "ck.pth")
    loaded = weights.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], payload["state_dict"]["w"])
    assert loaded["config"] == payload["config"]
    assert [p.name for p in path.parent.iterdir()] == ["ck.pth"]


def test_load_checkpoint_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        weights.load_checkpoint(tmp_path / "absent.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="garbage.pth"):
        weights.load_checkpoint(bad)
