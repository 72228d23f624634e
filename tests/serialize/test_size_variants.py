"""kiln.save / kiln.load of a SizeVariants (an engine for size 1 and one for the range from 2): one checked file."""

import json

import pytest
import torch

import kiln
from kiln.serialize import container, from_bytes, to_bytes
from kiln.size_variants import SizeVariants
from tests.helpers import assert_outputs_match


class SqueezesBatch(torch.nn.Module):
    """At batch 1 eager squeezes the batch away, so batch 1 gets an engine of its own."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 6)

    def forward(self, x):
        return torch.relu(self.fc(x).squeeze(0)) + 1


@pytest.fixture(scope="module")
def variants():
    torch.manual_seed(0)
    model = SqueezesBatch().eval()
    spec = kiln.Input(min_shape=(1, 4), opt_shape=(4, 4), max_shape=(16, 4))
    compiled = kiln.compile(model, [spec], min_block_size=1)
    assert isinstance(compiled, SizeVariants) and len(compiled.variants) == 2
    return model, compiled


def test_round_trip_answers_like_the_original_at_size_one_and_above(variants, tmp_path):
    model, compiled = variants
    kiln.save(compiled, tmp_path / "v.kiln")
    loaded = kiln.load(tmp_path / "v.kiln")
    assert isinstance(loaded, SizeVariants)
    assert [v.input_specs[0].describe() for v in loaded.variants] == ["(1, 4) float32", "(2..16, 4) float32"]
    for batch in (1, 2, 7, 16):
        x = torch.randn(batch, 4)
        with torch.no_grad():
            out = loaded(x)
            assert_outputs_match(out, compiled(x), rtol=0.0)
            assert_outputs_match(out, model(x))
    assert loaded(torch.randn(1, 4)).shape == (6,)  # the size-1 engine's squeezed shape
    with pytest.raises(kiln.InputMismatchError, match="outside the compiled range"):
        loaded(torch.randn(17, 4))


def test_round_trip_keeps_each_variants_report_and_engines(variants):
    _, compiled = variants
    loaded = from_bytes(to_bytes(compiled))
    for before, after in zip(compiled.variants, loaded.variants):
        assert after.report.to_json() == before.report.to_json()
        assert set(after.engine_blocks) == set(before.engine_blocks)
        assert after.out_spec == before.out_spec
    assert loaded.report.to_json() == compiled.report.to_json()
    assert to_bytes(loaded) == to_bytes(compiled)


def test_a_corrupt_size_variants_file_is_refused(variants, tmp_path):
    data = bytearray(to_bytes(variants[1]))
    for at in (container.HEADER_SIZE + 10, len(data) // 2, len(data) - 3):
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        with pytest.raises(kiln.CorruptFileError, match="v.kiln cannot be loaded"):
            from_bytes(bytes(damaged), source="v.kiln")
    (tmp_path / "cut.kiln").write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(kiln.CorruptFileError, match="truncated"):
        kiln.load(tmp_path / "cut.kiln")


def _repacked(data: bytes, edit) -> bytes:
    """The file with its manifest changed and its checksum made right again, as a buggy writer would make it."""
    contents = container.unpack(data, "v.kiln")
    manifest = json.loads(json.dumps(contents.manifest))
    edit(manifest)
    return container.pack(manifest, contents.weights)


def test_a_checksummed_file_with_a_bad_variant_list_is_refused(variants):
    data = to_bytes(variants[1])
    with pytest.raises(kiln.CorruptFileError, match="lists no size variants"):
        from_bytes(_repacked(data, lambda m: m.update(size_variants=[])), source="v.kiln")
    with pytest.raises(kiln.CorruptFileError, match="manifest is malformed"):
        from_bytes(_repacked(data, lambda m: m["size_variants"][0].pop("graph")), source="v.kiln")


def test_kiln_inspect_summarises_every_variant_of_the_file(variants, tmp_path):
    from typer.testing import CliRunner

    from kiln.cli import app
    from kiln.cli.commands import inspect_file  # noqa: F401  (registers the command on `app`)

    kiln.save(variants[1], tmp_path / "v.kiln")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "v.kiln"), "--html", str(tmp_path / "v.html")])
    assert result.exit_code == 0, result.output
    assert "size variant 0: (1, 4) float32" in result.output and "size variant 1: (2..16, 4) float32" in result.output
    assert result.output.count("Kiln partition report") == 2
    assert (tmp_path / "v.html").read_text().startswith("<!DOCTYPE html>")
