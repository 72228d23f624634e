import pytest

from kiln.engine.ir.symbolic import evaluate, evaluate_shape, symbols_in
from kiln.errors import CorruptFileError


@pytest.mark.parametrize(
    "expr, env, expected",
    [
        ("s0", {"s0": 5}, 5),
        ("2*s0 + 1", {"s0": 5}, 11),
        ("((s0 + 3)//4)", {"s0": 5}, 2),
        ("PythonMod(s0, 3)", {"s0": 7}, 1),
        ("Mod(s0, 3)", {"s0": 8}, 2),
        ("CeilDiv(s0, 4)", {"s0": 5}, 2),
        ("Max(3, s0)", {"s0": 1}, 3),
        ("s0*s1 - s1", {"s0": 4, "s1": 3}, 9),
        (7, {}, 7),
    ],
)
def test_evaluate(expr, env, expected):
    assert evaluate(expr, env) == expected


def test_shape_and_symbols():
    assert evaluate_shape([2, "s0", "s0*s1"], {"s0": 3, "s1": 4}) == [2, 3, 12]
    assert symbols_in("Max(3, s0) + s1") == {"s0", "s1"}


@pytest.mark.parametrize("hostile", ["__import__('os').system('true')", "s0.__class__", "open('x')", "lambda: 1", "s0 ** 2", "[s0]"])
def test_refuses_anything_but_integer_arithmetic(hostile):
    with pytest.raises(CorruptFileError):
        evaluate(hostile, {"s0": 2})


def test_unknown_symbol_is_an_error():
    with pytest.raises(CorruptFileError, match="unknown symbol"):
        evaluate("s9 + 1", {"s0": 1})
