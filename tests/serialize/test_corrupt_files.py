"""Damaged, truncated and foreign files are refused with CorruptFileError; nothing is ever unpickled."""

import io
import json
import os
import pickle
import random
import zipfile

import pytest
import torch

import kiln
from kiln.serialize import container, from_bytes, load, save


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _positions(data: bytes) -> list[int]:
    manifest_len = int.from_bytes(data[12:20], "little")
    weights_at = container.HEADER_SIZE + manifest_len
    header = list(range(container.HEADER_SIZE))
    rng = random.Random(0)
    manifest = rng.sample(range(container.HEADER_SIZE, weights_at), 40)
    weights = rng.sample(range(weights_at, len(data)), 40) + [weights_at, len(data) - 1]
    return header + manifest + weights


def test_every_flipped_byte_is_refused(mixed_bytes):
    for at in _positions(mixed_bytes):
        with pytest.raises(kiln.CorruptFileError):
            from_bytes(_flip(mixed_bytes, at), source="x.kiln")


def test_flipped_weight_byte_is_reported_as_a_checksum_mismatch(mixed_bytes):
    with pytest.raises(kiln.CorruptFileError, match="x.kiln.*checksum"):
        from_bytes(_flip(mixed_bytes, len(mixed_bytes) - 5), source="x.kiln")


def test_truncated_file_is_refused(mixed_bytes, tmp_path):
    for size in (1, 7, 8, 30, container.HEADER_SIZE, len(mixed_bytes) // 2, len(mixed_bytes) - 1):
        path = tmp_path / "cut.kiln"
        path.write_bytes(mixed_bytes[:size])
        with pytest.raises(kiln.CorruptFileError, match=r"cut\.kiln.*truncated"):
            load(path)


def test_appended_bytes_are_refused(mixed_bytes):
    with pytest.raises(kiln.CorruptFileError, match="unexpected bytes"):
        from_bytes(mixed_bytes + b"\0")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.kiln"
    path.write_bytes(b"")
    with pytest.raises(kiln.CorruptFileError, match=r"empty\.kiln.*empty"):
        load(path)


def test_random_bytes_are_refused():
    rng = random.Random(1)
    for size in (1, 16, 100, 10_000):
        with pytest.raises(kiln.CorruptFileError, match="not .*kiln|magic"):
            from_bytes(bytes(rng.randrange(256) for _ in range(size)))


def test_a_torch_save_file_is_refused_as_foreign(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(kiln.CorruptFileError, match="zip archive"):
        load(path)


def test_a_pickle_is_refused_and_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    path = tmp_path / "evil.kiln"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(kiln.CorruptFileError, match="pickle"):
        load(path)


def test_a_zip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", b"x")
    with pytest.raises(kiln.CorruptFileError, match="zip"):
        from_bytes(buf.getvalue())


def test_newer_format_version_is_refused(mixed_bytes):
    data = bytearray(mixed_bytes)
    data[8:12] = (container.FORMAT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(kiln.CorruptFileError, match="format version"):
        from_bytes(bytes(data))


def test_load_never_unpickles(mixed, tmp_path, monkeypatch):
    _, compiled, args = mixed
    save(compiled, tmp_path / "m.kiln")

    def forbidden(*a, **k):
        raise AssertionError("kiln.load must never unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load(tmp_path / "m.kiln")
    loaded(*args)


# Files whose checksum is right but whose content was written by hand (or by another Kiln).


def _repack(data: bytes, edit) -> bytes:
    contents = container.unpack(data, "x")
    manifest = json.loads(json.dumps(contents.manifest))
    edit(manifest)
    return container.pack(manifest, contents.weights)


def _first_engine(manifest):
    return next(iter(manifest["engines"].values()))


def test_unknown_tactic_is_replaced_with_a_warning(mixed, mixed_bytes):
    # A tactic this Kiln lacks (a file from another version, or an edited one) is a name, never code: re-chosen.
    data = _repack(mixed_bytes, lambda m: _first_engine(m)["steps"][0].update(tactic="rm_rf"))
    with pytest.warns(kiln.KilnWarning, match=r"m.kiln: 1 of \d+ layers .* this Kiln does not have.*rm_rf -> reference"):
        loaded = from_bytes(data, source="m.kiln")
    model, compiled, inputs = mixed
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs)["sum"], model(*inputs)["sum"])


def test_unknown_layer_kind_is_refused(mixed_bytes):
    data = _repack(mixed_bytes, lambda m: _first_engine(m)["steps"][0]["layer"].update(kind="exec"))
    with pytest.raises(kiln.CorruptFileError, match="layer kind 'exec'"):
        from_bytes(data)


def _set_target(manifest, target):
    node = next(n for n in manifest["graph"] if n["op"] == "call_function" and n["target"].startswith("aten."))
    node["target"] = target


@pytest.mark.parametrize(
    "target", ["os.system", "builtins.eval.default", "aten.__class__.__init__", "aten.cumsum", "aten.no_such_op.default", "torch.load"]
)
def test_graph_target_outside_the_allowlist_is_refused(mixed_bytes, target):
    data = _repack(mixed_bytes, lambda m: _set_target(m, target))
    with pytest.raises(kiln.CorruptFileError):
        from_bytes(data)


def test_missing_manifest_key_is_refused(mixed_bytes):
    data = _repack(mixed_bytes, lambda m: m.pop("engines"))
    with pytest.raises(kiln.CorruptFileError, match="malformed"):
        from_bytes(data)


def test_call_module_must_name_an_engine_of_the_file(mixed_bytes):
    def edit(m):
        next(n for n in m["graph"] if n["op"] == "call_module")["target"] = "__class__"

    with pytest.raises(kiln.CorruptFileError, match="not one of the file's engine blocks"):
        from_bytes(_repack(mixed_bytes, edit))
