import pytest
import torch

from segutils import get_device


def test_default_follows_cuda_availability(monkeypatch):
    monkeypatch.delenv("SEGUTILS_DEVICE", raising=False)
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv("SEGUTILS_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("SEGUTILS_DEVICE", "meta")
    assert get_device() == torch.device("meta")


def test_bad_environment_values_are_named(monkeypatch):
    monkeypatch.setenv("SEGUTILS_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="SEGUTILS_DEVICE='gpu0'"):
        get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("SEGUTILS_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device()
