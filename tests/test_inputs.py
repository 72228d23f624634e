"""Inputs and outputs of any structure: positional and keyword inputs, tensors in tuples, lists and dicts."""

import pytest
import torch

import kiln
from tests.helpers import assert_outputs_match, check_against_eager


class TwoArgsAndKeywords(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, a, b, *, scale, bias=None):
        return (self.fc(a) @ b) * scale + bias


def _kw_inputs():
    torch.manual_seed(0)
    return (torch.randn(3, 4), torch.randn(5, 6)), {"scale": torch.rand(3, 6), "bias": torch.randn(6)}


def test_positional_and_keyword_inputs():
    args, kwargs = _kw_inputs()
    compiled = check_against_eager(TwoArgsAndKeywords(), *args, kwargs=kwargs)
    assert [s.name for s in compiled.input_specs] == ["a", "b", "scale", "bias"]


def test_keywords_in_another_order_than_at_compile_time():
    args, kwargs = _kw_inputs()
    model = TwoArgsAndKeywords().eval()
    compiled = kiln.compile(model, list(args), kwarg_inputs=kwargs, min_block_size=1)
    swapped = {"bias": kwargs["bias"], "scale": kwargs["scale"]}
    with torch.no_grad():
        assert_outputs_match(compiled(*args, **swapped), model(*args, **kwargs))


def test_missing_keyword_is_an_input_mismatch():
    args, kwargs = _kw_inputs()
    compiled = kiln.compile(TwoArgsAndKeywords().eval(), list(args), kwarg_inputs=kwargs, min_block_size=1)
    with pytest.raises(kiln.InputMismatchError, match=r"\(T, T, scale=T, bias=T\).*called with \(T, T, scale=T\)"):
        compiled(*args, scale=kwargs["scale"])


def test_wrong_keyword_input_is_named():
    args, kwargs = _kw_inputs()
    compiled = kiln.compile(TwoArgsAndKeywords().eval(), list(args), kwarg_inputs=kwargs, min_block_size=1)
    with pytest.raises(kiln.InputMismatchError, match=r"input #2 \('scale'\).*dimension 1 is 7"):
        compiled(*args, scale=torch.rand(3, 7), bias=kwargs["bias"])


def test_input_specs_instead_of_tensors():
    model = TwoArgsAndKeywords().eval()
    compiled = kiln.compile(
        model,
        [kiln.Input((3, 4)), kiln.Input((5, 6))],
        kwarg_inputs={"scale": kiln.Input((3, 6)), "bias": kiln.Input((6,))},
        min_block_size=1,
    )
    args, kwargs = _kw_inputs()
    with torch.no_grad():
        assert_outputs_match(compiled(*args, **kwargs), model(*args, **kwargs))


def test_nested_input_structures():
    class Nested(torch.nn.Module):
        def forward(self, pair, named):
            return pair[0] * pair[1] + named["x"] - named["y"][0]

    x = [torch.randn(2, 3) for _ in range(4)]
    check_against_eager(Nested(), (x[0], x[1]), {"x": x[2], "y": [x[3]]})


class Outputs(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        a, b = torch.relu(x), torch.sigmoid(x)
        return {
            "tensor": lambda: a,
            "tuple": lambda: (a, b),
            "list": lambda: [a, b, a + b],
            "nested_dict": lambda: {"a": a, "more": {"b": b, "both": [a, (b, a * b)]}},
            "single_tuple": lambda: (a,),
        }[self.kind]()


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "nested_dict", "single_tuple"])
def test_output_structures(kind):
    out = check_against_eager(Outputs(kind), torch.randn(2, 3))(torch.randn(2, 3))
    expected_type = {"tensor": torch.Tensor, "tuple": tuple, "list": list, "nested_dict": dict, "single_tuple": tuple}[kind]
    assert type(out) is expected_type


def test_integer_and_bool_outputs():
    class IntBool(torch.nn.Module):
        def forward(self, x):
            return x.argmax(dim=1), x > 0, (x * 10).to(torch.int32), x.sum()

    compiled = check_against_eager(IntBool(), torch.randn(4, 5))
    out = compiled(torch.randn(4, 5))
    assert [o.dtype for o in out] == [torch.int64, torch.bool, torch.int32, torch.float32]


def test_integer_and_bool_inputs():
    class Masked(torch.nn.Module):
        def forward(self, x, mask, offset):
            return torch.where(mask, x, 0.0) + offset

    x, mask, offset = torch.randn(3, 4), torch.rand(3, 4) > 0.5, torch.randint(0, 5, (3, 4))
    compiled = check_against_eager(Masked(), x, mask, offset)
    assert [s.dtype for s in compiled.input_specs] == [torch.float32, torch.bool, torch.int64]
    with pytest.raises(kiln.InputMismatchError, match=r"input #1 \('mask'\).*dtype float32"):
        compiled(x, mask.float(), offset)


def test_an_input_returned_unchanged():
    class PassThrough(torch.nn.Module):
        def forward(self, x):
            return x, x * 2

    check_against_eager(PassThrough(), torch.randn(3))


def test_input_spec_validation():
    with pytest.raises(kiln.KilnError, match="min <= opt <= max"):
        kiln.Input(min_shape=(1, 3), opt_shape=(4, 3), max_shape=(2, 3))
    with pytest.raises(kiln.KilnError, match="same rank"):
        kiln.Input(min_shape=(1,), opt_shape=(1, 3), max_shape=(2, 3))
    with pytest.raises(kiln.KilnError, match="either shape= or"):
        kiln.Input((1, 2), min_shape=(1, 2), opt_shape=(1, 2), max_shape=(1, 2))
    with pytest.raises(kiln.KilnError, match="tuple of ints"):
        kiln.Input((1.5, 2))
    with pytest.raises(kiln.KilnError, match="dtype"):
        kiln.Input((1, 2), dtype="float32")


def test_input_json_round_trip():
    spec = kiln.Input(min_shape=(1, 3), opt_shape=(4, 3), max_shape=(8, 3), dtype=torch.float16, name="tokens")
    back = kiln.Input.from_json(spec.to_json())
    assert back.to_json() == spec.to_json() and back.is_dynamic


class ConvAndLinear(torch.nn.Module):
    """Reads a 4-D image and a 2-D matrix, so both layouts of strided input reach engine layers."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, image, rows):
        return torch.relu(self.conv(image)).sum((2, 3)), self.fc(rows) * 2


@pytest.fixture(scope="module")
def conv_and_linear():
    torch.manual_seed(0)
    model = ConvAndLinear().eval()
    compiled = kiln.compile(model, [torch.randn(2, 3, 8, 8), torch.randn(3, 8)], min_block_size=1)
    return model, compiled


STRIDED = {
    "transposed": lambda: (torch.randn(2, 3, 8, 8).transpose(2, 3), torch.randn(8, 3).t()),
    "every_other_column": lambda: (torch.randn(2, 3, 8, 16)[..., ::2], torch.randn(3, 16)[:, ::2]),
    "offset_views": lambda: (torch.randn(5, 3, 8, 8)[3:], torch.randn(6, 8)[3:]),
    "expanded": lambda: (torch.randn(1, 3, 8, 8).expand(2, 3, 8, 8), torch.randn(1, 8).expand(3, 8)),
    "channels_last": lambda: (torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(3, 8)),
}


@pytest.mark.parametrize("case", list(STRIDED))
def test_strided_and_offset_inputs_give_the_eager_answer(conv_and_linear, case):
    model, compiled = conv_and_linear
    image, rows = STRIDED[case]()
    assert not (image.is_contiguous() and rows.is_contiguous()) or image.storage_offset() > 0
    with torch.no_grad():
        assert_outputs_match(compiled(image, rows), model(image, rows))
