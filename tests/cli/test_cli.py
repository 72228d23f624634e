"""The `kiln` command: compile, inspect, bench, demo, and clear exit codes for bad arguments."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import kiln
from kiln.cli import app
from kiln.cli.commands import compile_model  # noqa: F401  (registers the commands on `app`)
from kiln.cli.shapes import InputSpecError, parse_input
from tests.cli.conftest import example
from tests.helpers import assert_outputs_match

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_compiled_file_matches_eager(kiln_file, reference_model):
    loaded = kiln.load(kiln_file)
    for batch in (1, 3):
        x = example(batch)
        with torch.no_grad():
            assert_outputs_match(loaded(x), reference_model(x))
    spec = loaded.input_specs[0]
    assert (spec.min_shape, spec.max_shape) == ((1, 3, 16, 16), (4, 3, 16, 16))


def test_compile_from_exported_program(tmp_path, reference_model):
    x = example(2)
    program = torch.export.export(reference_model, (x,))
    pt2 = tmp_path / "tiny.pt2"
    torch.export.save(program, pt2)
    out = tmp_path / "from_pt2.kiln"
    result = run("compile", str(pt2), "--input", "2x3x16x16", "--device", "cpu", "-o", str(out))
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        assert_outputs_match(kiln.load(out)(x), reference_model(x))


def test_inspect_prints_blocks_and_writes_html(kiln_file, tmp_path):
    html = tmp_path / "report.html"
    result = run("inspect", str(kiln_file), "--html", str(html))
    assert result.exit_code == 0, result.output
    assert "_engine_block_0" in result.output and "arena" in result.output and "Kiln partition report" in result.output
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_bench_on_cpu_prints_summary_and_says_it_is_not_speed(kiln_file, tmp_path):
    summary = tmp_path / "bench.json"
    result = run("bench", str(kiln_file), "--iterations", "3", "--warmup", "1", "--shape", "max", "--json", str(summary))
    assert result.exit_code == 0, result.output
    for label in ("Throughput", "Latency", "Host time", "GPU compute time", "median", "p99"):
        assert label in result.output
    numbers = json.loads(summary.read_text())
    assert numbers["batch"] == 4 and numbers["iterations"] == 3
    if not torch.cuda.is_available():
        assert "not a measure of its speed" in result.output
        assert "note" in numbers


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "nofile.py:make_model", "--input", "1x3x16x16", "-o", "x.kiln"], "does not exist"),
        (["compile", "model_without_colon", "--input", "1x3x16x16", "-o", "x.kiln"], "FILE.py:FUNCTION"),
        (["compile", "{model}:missing", "--input", "1x3x16x16", "-o", "x.kiln"], "has no function 'missing'"),
        (["compile", "{model}:make_model", "--input", "1x3xtwo", "-o", "x.kiln"], "not a positive size"),
        (["compile", "{model}:make_model", "--input", "1x3x16x16", "--int8", "--calib", "d.npy", "-o", "x.kiln"], "d.npy does not exist"),
        (["compile", "{model}:make_model", "--input", "1x3x16x16", "--int8", "-o", "x.kiln"], "--int8 needs --calib"),
        (["compile", "{model}:make_model", "--input", "1x3x16x16", "--calib", "d.npy", "-o", "x.kiln"], "only used with --int8"),
        (["compile", "{model}:make_model", "--input", "1x3x16x16", "-o", "/no/such/dir/x.kiln"], "does not exist"),
        (["inspect", "no_such_file.kiln"], "does not exist"),
        (["bench", "{kiln}", "--shape", "huge"], "use min, opt or max"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, model_file, kiln_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(model=model_file, kiln=kiln_file) for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_int8_says_not_available_in_this_build(model_file):
    from kiln.cli.commands.compile_model import int8_available

    if int8_available():
        pytest.skip("this build has kiln.ptq")
    result = run("compile", f"{model_file}:make_model", "--input", "1x3x16x16", "--int8", "-o", "x.kiln")
    assert result.exit_code == 2
    assert "not available in this build" in " ".join(result.output.split())


def test_int8_with_calibration_data(model_file, reference_model, tmp_path):
    from kiln.cli.commands.compile_model import int8_available

    if not int8_available():
        pytest.skip("this build has no kiln.ptq")
    import numpy as np

    calib = tmp_path / "calib.npy"
    np.save(calib, torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy())
    out = tmp_path / "int8.kiln"
    result = run(
        "compile", f"{model_file}:make_model", "--input", "2x3x16x16", "--int8", "--calib", str(calib), "--device", "cpu", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    x = example(2)
    with torch.no_grad():
        torch.testing.assert_close(kiln.load(out)(x), reference_model(x), atol=0.05, rtol=0.1)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3)))
    result = run("compile", f"{model_file}:make_model", "--input", "2x3x16x16", "--int8", "--calib", str(bad), "-o", str(out))
    assert result.exit_code == 2 and "expected rank 4" in result.output


def test_corrupt_file_exits_1_naming_the_problem(tmp_path):
    bad = tmp_path / "bad.kiln"
    bad.write_bytes(b"not a kiln file at all")
    result = run("inspect", str(bad))
    assert result.exit_code == 1
    assert "CorruptFileError" in result.output


def test_model_that_cannot_be_captured_exits_1(tmp_path):
    source = tmp_path / "branchy.py"
    source.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x + 1 if x.sum() > 0 else x - 1\n"
        "def make_model():\n"
        "    return M()\n"
    )
    result = run("compile", f"{source}:make_model", "--input", "2x3", "--device", "cpu", "-o", str(tmp_path / "m.kiln"))
    assert result.exit_code == 1
    assert "CaptureError" in result.output


def test_parse_input_shapes_and_ranges():
    spec = parse_input("1-8-32x3x224x224")
    assert (spec.min_shape, spec.opt_shape, spec.max_shape) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert parse_input("2x128:int64").dtype == torch.int64
    assert parse_input("1-4x3").opt_shape == (4, 3)
    for bad in ("", "0x3", "4-1x3", "1x3:float99", "1-2-3-4x3"):
        with pytest.raises(InputSpecError):
            parse_input(bad)


def test_python_m_kiln_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "kiln", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("compile", "inspect", "bench", "serve", "demo"):
        assert command in done.stdout


def test_unknown_command_exits_2():
    from kiln.__main__ import main

    assert main(["no-such-command"]) == 2


def test_kiln_demo_through_the_cli(capsys):
    from kiln.__main__ import main

    assert main(["demo", "--batch", "1", "--size", "32", "--device", "cpu"]) == 0
    assert "Demo OK." in capsys.readouterr().out


def test_serve_binds_localhost_unless_told():
    result = run("serve", "--help")
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output



def test_compile_leaves_stderr_to_the_builders_bars(model_file, tmp_path, monkeypatch):
    """On a terminal, rich's spinner replaces sys.stderr and would print each redraw of the builder's tqdm bars
    (tactic timing, kernel compiling) as a new line; the compile step runs with the real stderr instead."""
    from kiln.cli.app import err

    monkeypatch.setattr(err, "_force_terminal", True)
    stderr_during_compile = []
    real_compile = kiln.compile

    def spying_compile(*args, **kwargs):
        stderr_during_compile.append(type(sys.stderr).__module__)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(kiln, "compile", spying_compile)
    out = tmp_path / "m.kiln"
    result = run("compile", f"{model_file}:make_model", "--input", "1x3x16x16", "--device", "cpu", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert stderr_during_compile and not stderr_during_compile[0].startswith("rich")
