"""codegen/triton_source.compile_in: sizes that are not multiples of 16 become constexpr parameters, others stay."""

import pytest

from kiln.engine.kernels.codegen.triton_source import compile_in

SOURCE = """import triton

@triton.jit(do_not_specialize=["M"])
def k(x_ptr, M, N, K,
      stride_wn, C, BLOCK: tl.constexpr):
    NK = N * K
"""


def test_only_sizes_off_a_multiple_of_16_are_compiled_in():
    out = compile_in(SOURCE, {"N": 24, "K": 64, "stride_wn": 1, "C": 40})
    assert "def k(x_ptr, M, N: tl.constexpr, K,\n      stride_wn: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):" in out
    assert out.endswith("    NK = N * K\n")  # the body is left alone


def test_aligned_sizes_leave_the_source_as_it_is():
    assert compile_in(SOURCE, {"N": 32, "K": 16}) is SOURCE


def test_a_name_not_in_the_signature_is_an_error():
    with pytest.raises(ValueError, match="'Q' appears 0 times"):
        compile_in(SOURCE, {"Q": 3})
