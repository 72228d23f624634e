"""Weights keep their values, dtypes and memory layout (strides) through the safetensors blob."""

import pytest
import torch

import kiln
from kiln.serialize.weights import pack_weights, unpack_weights


def _round(tensors):
    blob, orders = pack_weights(tensors)
    return unpack_weights(blob, orders, torch.device("cpu"))


def test_layouts_and_dtypes_survive():
    base = torch.randn(4, 6, 3, 5)
    tensors = {
        "nchw": base,
        "nhwc": base.contiguous(memory_format=torch.channels_last),
        "transposed": torch.randn(7, 9).t(),
        "expanded": torch.randn(3, 1).expand(3, 4),
        "sliced": torch.randn(6, 6)[::2],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(3, 3).half(),
        "bool": torch.rand(5) > 0.5,
        "int": torch.arange(10),
    }
    back = _round(tensors)
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(back[key], value), key
        assert back[key].dtype == value.dtype
    assert back["nhwc"].stride() == tensors["nhwc"].stride()
    assert back["transposed"].stride() == tensors["transposed"].stride()
    assert back["nchw"].is_contiguous()


def test_shared_storage_is_saved_as_separate_tensors():
    w = torch.randn(4, 4)
    back = _round({"a": w, "b": w, "row": w[1]})
    assert torch.equal(back["a"], back["b"]) and torch.equal(back["row"], w[1])


def test_bad_dim_order_is_refused():
    blob, _ = pack_weights({"w": torch.randn(2, 3)})
    with pytest.raises(kiln.CorruptFileError, match="dim order"):
        unpack_weights(blob, {"w": [0, 0]}, torch.device("cpu"))


def test_bad_blob_is_refused():
    with pytest.raises(kiln.CorruptFileError, match="safetensors"):
        unpack_weights(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", {}, torch.device("cpu"))
