"""A .kiln file built elsewhere: on the CPU, a file whose plan holds CUDA tactics and their prepared weights.

The file is made from a CPU compile whose convolutions are given the tactics (and weights prepared
for them) a build on an H100 would choose, written through the serializer's own writer, so its
checksum holds. Loading it here must undo each preparation, switch to tactics the CPU can run, warn,
and answer as eager PyTorch does.
"""

import warnings
from dataclasses import replace

import pytest
import torch

import kiln
from kiln.engine.builder.build import PreparedWeights, originals_of_prepared
from kiln.engine.kernels.registry import REFERENCE, get_tactic
from kiln.engine.plan import PLAN_FORMAT, Step
from kiln.serialize import container, from_bytes, to_bytes
from tests.gpu.models import SmallCNN, init_bn
from tests.helpers import assert_outputs_match

H100 = {"device_type": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).eval()
    x = torch.randn(2, 3, 16, 16)
    return model, kiln.compile(model, [x], min_block_size=1), x


def gpu_tactic(step: Step, weights: dict) -> str | None:
    """What an H100 build picks for a conv: the weight-rearranging Triton kernels where they apply, else cuDNN NHWC."""
    if step.layer.kind not in ("conv", "conv_epilogue"):
        return None
    w = weights[step.layer.inputs[1]]
    if step.layer.attrs["groups"] > 1:
        return "triton_depthwise"
    if tuple(w.shape[2:]) == (1, 1) and step.layer.attrs["stride"] == [1, 1] and step.layer.attrs["padding"] == [0, 0]:
        return "triton_gemm_1x1"
    return "aten_nhwc"


def as_built_on_a_gpu(compiled, monkeypatch, edit=None) -> bytes:
    ((_, engine),) = compiled.engine_blocks.items()
    plan = engine.plan
    weights = PreparedWeights(dict(plan.weights), dict(plan.tensors))
    steps = []
    for step in plan.steps:
        name = gpu_tactic(step, plan.weights)
        if name is None:
            steps.append(step)
            continue
        steps.append(Step(weights.apply(step.layer, get_tactic(step.layer.kind, name)), name, {REFERENCE: 0.05, name: 0.01}))
    used = {n for s in steps for n in s.layer.inputs if n is not None}
    kept = used | originals_of_prepared(steps)
    gpu_plan = replace(
        plan,
        steps=steps,
        weights={n: w for n, w in weights.values.items() if n in used},
        tensors={n: d for n, d in weights.tensors.items() if d.role != "constant" or n in kept},
        device="cuda:0",
    )
    monkeypatch.setattr(engine, "plan", gpu_plan)
    monkeypatch.setattr(compiled, "device", torch.device("cuda", 0))
    contents = container.unpack(to_bytes(compiled), "model.kiln")
    contents.manifest["built_on"].update(H100)
    if edit is not None:
        edit(contents.manifest)
    return container.pack(contents.manifest, contents.weights)


def test_the_manifest_records_what_built_it(cnn):
    manifest = container.unpack(to_bytes(cnn[1]), "m").manifest
    built = manifest["built_on"]
    assert built["device_type"] == "cpu" and built["kiln"] == kiln.__version__ and built["torch"] == torch.__version__
    assert "triton" in built and "gpu" not in built  # no GPU name for a CPU build


def test_a_file_built_on_a_gpu_loads_on_the_cpu_with_reference_tactics(cnn, monkeypatch):
    model, compiled, x = cnn
    original = next(iter(compiled.engine_blocks.values())).plan
    data = as_built_on_a_gpu(compiled, monkeypatch)
    built_here = r"built on NVIDIA H100 80GB HBM3 \(sm_90\) and is loaded on cpu: \d+ of \d+ layers"
    with pytest.warns(kiln.KilnWarning, match=built_here) as record:
        loaded = from_bytes(data, "model.kiln", device="cpu")
    assert "triton_gemm_1x1 -> reference" in str(record[0].message) and "Compile the model again for cpu" in str(record[0].message)
    plan = next(iter(loaded.engine_blocks.values())).plan
    assert plan.device == "cpu" and {s.tactic for s in plan.steps} == {REFERENCE}
    # Every weight prepared for a GPU tactic was put back as it was before, value for value.
    assert not [n for n in plan.weights if "__" in n]
    for name, value in plan.weights.items():
        assert torch.equal(value, original.weights[name]), name
    with torch.no_grad():
        assert_outputs_match(loaded(x), model(x))


def test_retime_on_the_cpu_chooses_without_a_warning(cnn, monkeypatch):
    model, compiled, x = cnn
    data = as_built_on_a_gpu(compiled, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kiln.KilnWarning)
        loaded = from_bytes(data, "model.kiln", device="cpu", retime=True)
    with torch.no_grad():
        assert_outputs_match(loaded(x), model(x))


def test_a_gpu_file_without_a_device_is_refused_where_cuda_is_missing(cnn, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    data = as_built_on_a_gpu(cnn[1], monkeypatch)
    with pytest.raises(kiln.KilnError, match="compiled for cuda:0, but CUDA is not available here.*device='cpu'"):
        from_bytes(data, "model.kiln")


def _drop_original_descs(manifest):
    plan = next(iter(manifest["engines"].values()))
    prepared = {n.split("__")[0] for n in plan["weights"] if "__" in n}
    plan["tensors"] = [t for t in plan["tensors"] if t["name"] not in prepared]


def test_a_prepared_weight_that_cannot_be_undone_is_a_clear_error(cnn, monkeypatch):
    # Files from before the original shapes were recorded cannot switch tactics for a prepared weight.
    data = as_built_on_a_gpu(cnn[1], monkeypatch, edit=_drop_original_descs)
    with pytest.raises(kiln.KilnError, match=r"as prepared for tactic .* does not record the weight's original shape.*cuda:0"):
        from_bytes(data, "model.kiln", device="cpu")


def _set_versions(kiln_version=None, torch_version=None):
    def edit(manifest):
        if kiln_version:
            manifest["built_on"]["kiln"] = kiln_version
        if torch_version:
            manifest["built_on"]["torch"] = torch_version

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_versions(kiln_version="7.0.0"), r"written by Kiln 7\.0\.0, and this is Kiln .* another major version"),
        (_set_versions(torch_version="9.1.0+cu999"), r"written by PyTorch 9\.1\.0\+cu999.*load the file with PyTorch 9\.1\.0"),
        (
            lambda m: next(iter(m["engines"].values())).update(format=PLAN_FORMAT + 1),
            rf"plan format {PLAN_FORMAT + 1}, and this Kiln reads format {PLAN_FORMAT}",
        ),
    ],
)
def test_a_file_this_version_cannot_read_is_refused(cnn, edit, message):
    contents = container.unpack(to_bytes(cnn[1]), "m")
    edit(contents.manifest)
    with pytest.raises(kiln.IncompatibleFileError, match="model.kiln cannot be loaded: .*" + message):
        from_bytes(container.pack(contents.manifest, contents.weights), "model.kiln")


def test_an_op_missing_from_this_torch_names_both_versions(mixed_bytes):
    contents = container.unpack(mixed_bytes, "m")
    _set_versions(torch_version=torch.__version__.split(".")[0] + ".0.0")(contents.manifest)
    node = next(n for n in contents.manifest["graph"] if n["op"] == "call_function" and n["target"].startswith("aten."))
    node["target"] = "aten.op_of_a_newer_torch.default"
    with pytest.raises(kiln.CorruptFileError, match=r"op_of_a_newer_torch.*written by Kiln .* with PyTorch \d+\.0\.0; this is"):
        from_bytes(container.pack(contents.manifest, contents.weights), "model.kiln")
