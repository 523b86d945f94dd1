"""``train.device``: what ``auto`` means (``$HYDRANET_DEVICE`` first), and CUDA ranks needing
one GPU each. The suite's autouse fixture sets ``HYDRANET_DEVICE=cpu``; these tests set or
clear it themselves."""

from __future__ import annotations

import pytest
import torch

from hydranet.errors import SpecError, UserError
from hydranet.train.device import AUTO_DEVICE_ENV, device_type, select_device
from hydranet.train.distributed import check_gpus_per_rank

HAS_CUDA = torch.cuda.is_available()


def test_auto_is_cuda_when_there_is_one_and_no_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv(AUTO_DEVICE_ENV, raising=False)
    want = "cuda" if HAS_CUDA else "cpu"
    assert select_device("auto").type == want and device_type("auto") == want
    monkeypatch.setenv(AUTO_DEVICE_ENV, "auto")  # the same as unset
    assert select_device("auto").type == want


def test_the_variable_decides_auto_but_not_a_named_device(monkeypatch):
    monkeypatch.setenv(AUTO_DEVICE_ENV, "cpu")
    assert select_device("auto") == torch.device("cpu") and device_type("auto") == "cpu"
    monkeypatch.setenv(AUTO_DEVICE_ENV, "cuda")
    assert device_type("auto") == "cuda"
    assert select_device("cpu") == torch.device("cpu")  # a spec that names its device keeps it


def test_a_bad_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv(AUTO_DEVICE_ENV, "tpu9")
    with pytest.raises(SpecError, match=r"\$HYDRANET_DEVICE.*unknown device 'tpu9'"):
        select_device("auto")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message of a machine without CUDA")
def test_cuda_through_the_variable_on_a_machine_without_it(monkeypatch):
    monkeypatch.setenv(AUTO_DEVICE_ENV, "cuda")
    with pytest.raises(SpecError, match=r"\$HYDRANET_DEVICE.*CUDA is not available"):
        select_device("auto")


def test_cuda_ranks_need_one_gpu_each(monkeypatch):
    monkeypatch.setenv(AUTO_DEVICE_ENV, "cpu")
    check_gpus_per_rank("auto", 8)  # CPU ranks: any number
    check_gpus_per_rank("cpu", 8)
    gpus = torch.cuda.device_count()
    if gpus:
        check_gpus_per_rank("cuda", gpus)
    with pytest.raises(UserError, match=rf"{gpus + 1} CUDA ranks .* it has {gpus}: .*--nproc"):
        check_gpus_per_rank("cuda", gpus + 1)
