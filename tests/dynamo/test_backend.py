"""torch.compile(model, backend="kiln"): graph breaks, options, dynamic shapes, recompiles, explain."""

import logging
import subprocess
import sys

import pytest
import torch

import kiln
from kiln.dynamo import KilnBackend, option_names
from tests.helpers import assert_outputs_match


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class BreaksInTheMiddle(torch.nn.Module):
    """A print and a data-dependent Python branch: dynamo breaks the graph there."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        y = torch.nn.functional.gelu(self.fc1(x)) * 2
        print("between the graphs")
        if y.sum() > 0:
            y = y + 1
        return {"probs": self.fc2(y).softmax(-1), "hidden": y}


def run(compiled, model, *args):
    with torch.no_grad():
        out = compiled(*args)
        assert_outputs_match(out, model(*args))
    return out


def engine_ops(record) -> int:
    return record.report.engine_ops


def test_registered_name_runs_a_model_with_graph_breaks(capsys):
    model = BreaksInTheMiddle().eval()
    compiled = torch.compile(model, backend="kiln", options={"min_block_size": 1})
    run(compiled, model, torch.randn(4, 16))
    assert "between the graphs" in capsys.readouterr().out  # the print still runs, in Python


def test_each_graph_goes_through_kilns_pipeline():
    model = BreaksInTheMiddle().eval()
    backend = KilnBackend(min_block_size=1)
    run(torch.compile(model, backend=backend), model, torch.randn(4, 16))
    assert len(backend.records) >= 2
    assert all(r.fallback_reason is None for r in backend.records)
    assert all(engine_ops(r) > 0 for r in backend.records)
    assert "run on the Kiln engine" in backend.records[0].summary()


def test_options_reach_the_compiler():
    model = BreaksInTheMiddle().eval()
    backend = KilnBackend(min_block_size=1, torch_executed_ops={"torch.ops.aten.gelu.default"})
    run(torch.compile(model, backend=backend), model, torch.randn(4, 16))
    rows = [row for row in backend.records[0].report.rows if "gelu" in row.op]
    assert rows and all(row.where == "pytorch" for row in rows)
    assert "torch_executed_ops" in rows[0].reason


def test_default_min_block_size_leaves_small_graphs_in_pytorch():
    model = BreaksInTheMiddle().eval()
    backend = KilnBackend()
    run(torch.compile(model, backend=backend), model, torch.randn(4, 16))
    last = backend.records[-1]
    assert engine_ops(last) == 0 and "min_block_size=5" in last.report.table()


def test_unknown_option_is_named_with_a_suggestion():
    with pytest.raises(kiln.KilnError, match=r"unknown option 'min_blok_size'.*Did you mean 'min_block_size'"):
        KilnBackend(min_blok_size=1)
    model = BreaksInTheMiddle().eval()
    compiled = torch.compile(model, backend="kiln", options={"enabled_precision": {torch.half}})
    with pytest.raises(Exception, match=r"unknown option 'enabled_precision'.*enabled_precisions"):
        compiled(torch.randn(4, 16))


def test_option_names_are_the_compile_settings():
    names = option_names()
    for expected in ["enabled_precisions", "min_block_size", "torch_executed_ops", "require_full_compilation", "debug"]:
        assert expected in names
    assert "inputs" not in names and "module" not in names


class Cumprod(torch.nn.Module):
    # cumprod has no converter (cumsum has one now): the op that must stay in PyTorch.
    def forward(self, x):
        return torch.cumprod(torch.relu(x), dim=1) * 3


def test_require_full_compilation_names_the_unsupported_op():
    model = Cumprod().eval()
    compiled = torch.compile(model, backend=KilnBackend(min_block_size=1, require_full_compilation=True))
    with pytest.raises(Exception, match="cumprod"):
        with torch.no_grad():
            compiled(torch.randn(2, 8))


def test_unsupported_op_falls_back_inside_the_graph():
    model = Cumprod().eval()
    backend = KilnBackend(min_block_size=1)
    run(torch.compile(model, backend=backend), model, torch.randn(2, 8))
    (record,) = backend.records
    assert record.report.pytorch_ops >= 1 and record.report.engine_ops >= 1


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_dynamic_batch_becomes_a_kiln_range_and_recompiles_are_recorded(caplog):
    model = Mlp().eval()
    backend = KilnBackend(min_block_size=1)
    compiled = torch.compile(model, backend=backend)
    with caplog.at_level(logging.INFO, logger="kiln.dynamo"):
        for batch in [4, 8, 12, 8]:
            run(compiled, model, torch.randn(batch, 16))
    first, second = backend.records
    assert first.cause == "first compile" and not first.symbols
    # dynamo's automatic dynamic: the second size recompiles with a symbolic batch, which Kiln builds as a range.
    assert second.cause == "recompile"
    (symbol,) = second.symbols
    assert "opt 8" in symbol and "dim 0" in symbol
    assert any("recompile" in message for message in caplog.messages)


def test_call_past_an_open_range_rebuilds_for_a_larger_one():
    model = Mlp().eval()
    backend = KilnBackend(min_block_size=1)
    compiled = torch.compile(model, backend=backend)
    for batch in [4, 8, 300, 5]:
        run(compiled, model, torch.randn(batch, 16))
    grown = backend.records[-1]
    assert grown.cause.startswith("range grown: ") and "300" in grown.cause
    assert engine_ops(grown) == engine_ops(backend.records[1]) > 0


def test_mark_dynamic_compiles_a_range_on_the_first_call():
    model = Mlp().eval()
    backend = KilnBackend(min_block_size=1)
    x = torch.randn(6, 16)
    torch._dynamo.mark_dynamic(x, 0, min=2, max=64)
    compiled = torch.compile(model, backend=backend)
    run(compiled, model, x)
    run(compiled, model, torch.randn(64, 16))
    (record,) = backend.records
    assert record.inputs[0].startswith("l_x_: (2..64, 16)")


def test_dynamic_true_with_several_symbols():
    model = Mlp().eval()
    backend = KilnBackend(min_block_size=1)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    for batch in [3, 7, 20]:
        run(compiled, model, torch.randn(batch, 16))
    assert backend.records[0].symbols


class TwoInputs(torch.nn.Module):
    def forward(self, ids, mask):
        return (ids * mask).sum(-1) + ids.mean(-1)


def test_dims_that_must_agree_share_one_symbol():
    model = TwoInputs().eval()
    backend = KilnBackend(min_block_size=1)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    for seq in [5, 9]:
        run(compiled, model, torch.randn(2, seq), torch.randn(2, seq))
    record = backend.records[-1]
    assert any("l_ids_ dim 1" in s and "l_mask_ dim 1" in s for s in record.symbols), record.symbols


def test_graph_kiln_cannot_capture_runs_in_eager_and_says_why(monkeypatch):
    def refuse(*args, **kwargs):
        raise kiln.CaptureError("torch.export could not trace this graph")

    monkeypatch.setattr("kiln.dynamo.backend.capture", refuse)
    model = Mlp().eval()
    backend = KilnBackend(min_block_size=1)
    run(torch.compile(model, backend=backend), model, torch.randn(4, 16))
    (record,) = backend.records
    assert record.fallback_reason == "CaptureError: torch.export could not trace this graph"
    assert "eager PyTorch (CaptureError" in record.summary()


def test_a_bad_setting_is_an_error_not_a_silent_fallback():
    model = Mlp().eval()
    compiled = torch.compile(model, backend=KilnBackend(min_block_size=1, enabled_precisions={torch.float64}))
    with pytest.raises(Exception, match="enabled_precisions"):
        compiled(torch.randn(4, 16))


def test_explain_shows_the_breaks_and_what_kiln_made_of_each_graph():
    model = BreaksInTheMiddle().eval()
    found = kiln.explain(model, torch.randn(4, 16), options={"min_block_size": 1})
    assert found.graph_count >= 2 and found.graph_break_count >= 1
    text = found.table()
    assert "test_backend.py" in text  # where in the user's code it broke
    assert "print" in text or "builtin" in text or "jump" in text
    assert "Kiln partition report" in text
    assert all(r.report is not None for r in found.graphs)


def test_training_graph_runs_in_eager_so_gradients_still_flow():
    model = Mlp()
    backend = KilnBackend(min_block_size=1)
    out = torch.compile(model, backend=backend)(torch.randn(4, 16))
    out.sum().backward()
    assert model.fc1.weight.grad is not None
    (record,) = backend.records
    assert "torch.no_grad()" in record.fallback_reason


def test_training_graph_under_require_full_compilation_is_an_error():
    model = Mlp()
    compiled = torch.compile(model, backend=KilnBackend(min_block_size=1, require_full_compilation=True))
    with pytest.raises(Exception, match="autograd is on"):
        compiled(torch.randn(4, 16))


def test_backend_name_resolves_through_the_entry_point_without_import_kiln():
    code = (
        "import sys, torch\n"
        "assert 'kiln' not in sys.modules\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()\n"
        "x = torch.randn(2, 4)\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(torch.compile(m, backend='kiln', options={'min_block_size': 1})(x), m(x))\n"
        "assert 'kiln' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
