"""What the user sees when something is wrong: clear errors, or a PyTorch fallback listed in the report."""

import pytest
import torch

import kiln
from kiln.report.partition_report import PartitionReport
from tests.helpers import assert_outputs_match


class SmallMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class WithCumprod(torch.nn.Module):
    """Supported ops, an unsupported op (cumprod), then supported ops again."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.fc(x)) * 2 + 1
        h = torch.cumprod(h, dim=1)
        return torch.sigmoid(h) - 0.5


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = SmallMLP().eval()
    return kiln.compile(model, [kiln.Input((2, 8))], min_block_size=1)


# --- wrong inputs at call time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, expected",
    [
        (torch.randn(3, 8), r"input #0 \('x'\).*dimension 0 is 3.*\(2, 8\) float32"),
        (torch.randn(2, 8, 1), r"input #0 \('x'\).*rank 3.*\(2, 8\) float32"),
        (torch.randn(2, 8, dtype=torch.float64), r"input #0 \('x'\).*dtype float64.*\(2, 8\) float32.*\.to\(torch\.float32\)"),
        (torch.empty(2, 8, device="meta"), r"input #0 \('x'\).*on meta.*\.to\('cpu'\)"),
        (3.0, r"input #0 \('x'\).*float, not a tensor"),
    ],
)
def test_wrong_input_names_the_input_and_the_spec(mlp, bad, expected):
    with pytest.raises(kiln.InputMismatchError, match=expected):
        mlp(bad)


def test_wrong_number_of_inputs(mlp):
    with pytest.raises(kiln.InputMismatchError, match=r"compiled for inputs structured as \(T\).*called with \(T, T\)"):
        mlp(torch.randn(2, 8), torch.randn(2, 8))


def test_input_mismatch_is_a_value_error(mlp):
    with pytest.raises(ValueError):
        mlp(torch.randn(5, 8))


# --- capture -------------------------------------------------------------------------------------


def test_data_dependent_branch_is_a_capture_error_that_says_why_and_what_to_do():
    with pytest.raises(kiln.CaptureError) as info:
        kiln.compile(DataDependent().eval(), [torch.randn(4)])
    message = str(info.value)
    assert "DataDependent" in message
    assert "test_errors.py" in message and "if x.sum() > 0" in message
    assert "value inside a tensor" in message
    assert "torch.where" in message and "torch.cond" in message


def test_capture_error_is_a_kiln_error():
    assert issubclass(kiln.CaptureError, kiln.KilnError)


# --- unsupported ops -----------------------------------------------------------------------------


def test_unsupported_op_falls_back_to_pytorch_and_is_reported():
    torch.manual_seed(0)
    model = WithCumprod().eval()
    x = torch.randn(2, 8)
    compiled = kiln.compile(model, [x], min_block_size=1)
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))
    rows = {r.op: r for r in compiled.report.rows}
    assert rows["aten.cumprod.default"].where == "pytorch"
    assert rows["aten.cumprod.default"].reason == "unsupported op"
    assert rows["aten.linear.default"].where == "engine"
    assert len(compiled.engine_blocks) == 2, "the ops before and after cumprod form two engine blocks"
    assert "aten.cumprod.default: unsupported op" in compiled.report.table()


def test_require_full_compilation_lists_the_ops():
    with pytest.raises(kiln.UnsupportedOpError) as info:
        kiln.compile(WithCumprod().eval(), [torch.randn(2, 8)], require_full_compilation=True)
    message = str(info.value)
    assert "cumprod" in message and "aten.cumprod.default" in message and "unsupported op" in message
    assert "require_full_compilation=False" in message


def test_require_full_compilation_names_torch_executed_ops_too():
    with pytest.raises(kiln.UnsupportedOpError, match=r"aten\.relu\.default.*in torch_executed_ops"):
        kiln.compile(SmallMLP().eval(), [torch.randn(2, 8)], require_full_compilation=True, torch_executed_ops=["aten.relu.default"])


@pytest.mark.parametrize(
    "op", ["aten.relu.default", "torch.ops.aten.relu.default", "aten::relu", torch.ops.aten.relu.default, torch.ops.aten.relu]
)
def test_torch_executed_ops_forces_an_op_to_pytorch(op):
    torch.manual_seed(0)
    model = SmallMLP().eval()
    x = torch.randn(2, 8)
    compiled = kiln.compile(model, [x], min_block_size=1, torch_executed_ops=[op])
    rows = {r.op: r for r in compiled.report.rows}
    assert rows["aten.relu.default"].where == "pytorch"
    assert rows["aten.relu.default"].reason == "in torch_executed_ops"
    assert all(r.where == "engine" for r in compiled.report.rows if r.op != "aten.relu.default")
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))


# --- min_block_size ------------------------------------------------------------------------------


def test_blocks_smaller_than_min_block_size_stay_in_pytorch():
    torch.manual_seed(0)
    model = WithCumprod().eval()
    x = torch.randn(2, 8)
    # Before cumprod: linear, relu, mul, add (4 ops); after: sigmoid, sub (2 ops).
    compiled = kiln.compile(model, [x], min_block_size=3)
    after = [r for r in compiled.report.rows if r.op in ("aten.sigmoid.default", "aten.sub.Tensor")]
    assert after and all(r.where == "pytorch" for r in after)
    assert all("< min_block_size=3" in r.reason for r in after)
    assert {r.where for r in compiled.report.rows if r.op == "aten.linear.default"} == {"engine"}
    assert len(compiled.engine_blocks) == 1
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))


def test_min_block_size_larger_than_the_model_runs_everything_in_pytorch():
    model = SmallMLP().eval()
    x = torch.randn(2, 8)
    compiled = kiln.compile(model, [x], min_block_size=100)
    assert compiled.report.engine_ops == 0 and not compiled.engine_blocks
    with torch.no_grad():
        assert_outputs_match(compiled(x), model(x))


def test_min_block_size_must_be_positive():
    with pytest.raises(kiln.KilnError, match="min_block_size"):
        kiln.compile(SmallMLP().eval(), [torch.randn(2, 8)], min_block_size=0)


# --- dryrun and debug ----------------------------------------------------------------------------


def test_dryrun_returns_the_report_without_building():
    report = kiln.compile(WithCumprod().eval(), [torch.randn(2, 8)], min_block_size=1, dryrun=True)
    assert isinstance(report, PartitionReport)
    assert report.pytorch_ops == 1 and report.engine_ops > 0
    assert not report.layers, "a dry run builds no engine"


def test_debug_prints_the_table(capsys):
    kiln.compile(WithCumprod().eval(), [torch.randn(2, 8)], min_block_size=1, debug=True)
    out = capsys.readouterr().out
    assert "Kiln partition report" in out
    assert "aten.cumprod.default" in out and "unsupported op" in out
    assert "layers and tactics" in out


def test_quiet_by_default(capsys):
    kiln.compile(SmallMLP().eval(), [torch.randn(2, 8)], min_block_size=1)
    assert capsys.readouterr().out == ""


# --- bad compile() arguments ---------------------------------------------------------------------


def test_compile_needs_a_module():
    with pytest.raises(kiln.KilnError, match="torch.nn.Module"):
        kiln.compile(lambda x: x, [torch.randn(2)])


def test_compile_needs_inputs():
    with pytest.raises(kiln.KilnError, match="needs inputs"):
        kiln.compile(SmallMLP(), [])


def test_unsupported_precision_is_refused():
    with pytest.raises(kiln.KilnError, match="enabled_precisions"):
        kiln.compile(SmallMLP(), [torch.randn(2, 8)], enabled_precisions={torch.float64})


def test_non_tensor_input_spec_is_refused():
    with pytest.raises(kiln.KilnError, match=r"input #0 is str"):
        kiln.compile(SmallMLP().eval(), ["x"])
