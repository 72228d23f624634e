"""Batching and the HTTP codec without Ray: merged calls equal separate calls; bad requests fail alone."""

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.errors import InputMismatchError
from kiln.serve import codec
from kiln.serve.batching import Request, max_batch_of, request_rows, run_batch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))).softmax(-1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def compiled(model):
    return kiln.compile(
        model, inputs=[kiln.Input(min_shape=(1, 3, 8, 8), opt_shape=(4, 3, 8, 8), max_shape=(6, 3, 8, 8))], min_block_size=1
    )


def test_batched_results_equal_eager_and_respect_the_max_batch(model, compiled):
    gen = torch.Generator().manual_seed(0)
    requests = [Request([torch.randn(rows, 3, 8, 8, generator=gen)]) for rows in (1, 2, 1, 3, 1, 2)]
    assert max_batch_of(compiled) == 6 and request_rows(requests) == 10
    results, calls = run_batch(compiled, requests, max_rows=6)
    assert sum(calls) == 10 and max(calls) <= 6 and len(calls) < len(requests)
    for request, result in zip(requests, results):
        with torch.no_grad():
            torch.testing.assert_close(result[0], model(request.tensors[0]), rtol=1e-4, atol=1e-6)


def test_a_bad_request_fails_alone_with_the_engines_message(compiled):
    good = Request([torch.randn(2, 3, 8, 8)])
    results, calls = run_batch(compiled, [good, Request([torch.randn(2, 3, 9, 8)]), Request([torch.randn(1, 3, 8, 8).double()]), good], 6)
    assert isinstance(results[1], InputMismatchError) and "outside the compiled range" in str(results[1])
    assert isinstance(results[2], InputMismatchError) and "dtype" in str(results[2])
    assert torch.equal(results[0][0], results[3][0])
    assert calls == [4]


@pytest.mark.parametrize("kind", [codec.JSON, codec.NPY, codec.NPZ])
def test_codec_round_trip(kind, compiled):
    x = torch.randn(2, 3, 8, 8)
    body, media = codec.encode_request([x], kind)
    (decoded,) = codec.decode(body, media, compiled.input_specs)
    assert torch.equal(decoded, x)
    out = [torch.randn(2, 3), torch.arange(4)] if kind != codec.NPY else [torch.randn(2, 3)]
    body, media = codec.encode(out, kind)
    for a, b in zip(codec.decode_response(body, media), out):
        assert torch.equal(a, b)


def test_codec_refuses_what_it_cannot_read(compiled):
    with pytest.raises(codec.RequestError, match="not JSON"):
        codec.decode(b"{oops", codec.JSON, compiled.input_specs)
    with pytest.raises(codec.RequestError, match="inputs"):
        codec.decode(b'{"x": 1}', codec.JSON, compiled.input_specs)
    with pytest.raises(codec.RequestError, match="rectangular"):
        codec.decode(b'{"inputs": [[[1, 2], [3]]]}', codec.JSON, compiled.input_specs)
    with pytest.raises(codec.RequestError) as info:
        codec.decode(b"", "text/plain", compiled.input_specs)
    assert info.value.status == 415
    with pytest.raises(codec.RequestError, match="not a application/x-npy"):
        codec.decode(b"\x93NUMPY garbage", codec.NPY, compiled.input_specs)
    # .npy files with Python objects would need pickle: refused.
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(codec.RequestError):
        codec.decode(buffer.getvalue(), codec.NPY, compiled.input_specs)


def test_a_request_decoded_on_the_cpu_is_valid_for_an_engine_on_the_gpu():
    # The H100 run answered every request with HTTP 400: validation compared the CPU-decoded tensor's device with
    # the engine's (cuda), though run_batch moves requests there. Shapes and dtypes are still checked.
    from types import SimpleNamespace

    from kiln.serve.batching import validate

    engine = SimpleNamespace(input_specs=[kiln.Input(min_shape=(1, 4), opt_shape=(2, 4), max_shape=(8, 4))], device=torch.device("cuda"))
    validate(engine, Request([torch.randn(2, 4)]))
    with pytest.raises(InputMismatchError, match="shape|dimension|range"):
        validate(engine, Request([torch.randn(2, 5)]))
