"""kiln.serve on localhost through Ray Serve: 200 concurrent requests checked against eager, batching seen,
bad requests answered 4xx with the engine's message, everything shut down with no processes left.

Ray Serve comes with the test extra (pip install -e ".[test]"), so CI runs this on its CPU.
"""

import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray.serve  # noqa: F401  (in the test extra: a missing Ray fails here instead of skipping in CI)
import torch
from torch import nn

import kiln
from kiln.errors import KilnError
from kiln.serve import codec, serve


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc: no process-name matching)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path_factory.mktemp("serve") / "net.kiln"
    spec = kiln.Input(min_shape=(1, 3, 8, 8), opt_shape=(4, 3, 8, 8), max_shape=(8, 3, 8, 8))
    kiln.save(kiln.compile(model, inputs=[spec], min_block_size=1), path)
    before = descendants(os.getpid())
    server = serve(str(path), port=free_port(), batch_wait_timeout_s=0.05, ray_init={"num_cpus": 2})
    try:
        yield model, server
    finally:
        server.shutdown()
        deadline = time.monotonic() + 30
        while descendants(os.getpid()) - before and time.monotonic() < deadline:
            time.sleep(0.5)
        left = descendants(os.getpid()) - before
        assert not left, f"processes left after shutdown: {sorted(left)}"


def post(url: str, body: bytes, content_type: str):
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read()


def test_binds_localhost_by_default(served):
    _, server = served
    assert server.url.startswith("http://127.0.0.1:") and server.max_batch_size == 8


def test_200_concurrent_requests_match_eager_and_are_batched(served):
    model, server = served

    def one(i: int):
        x = torch.randn(1 + i % 2, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        kind = (codec.JSON, codec.NPY, codec.NPZ)[i % 3]
        status, media, body = post(server.url, *codec.encode_request([x], kind))
        assert status == 200, body[:500]
        (out,) = codec.decode_response(body, media)
        with torch.no_grad():
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
        return i

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(one, range(200))) == list(range(200))
    sizes = server.stats()["batch_sizes"]
    assert sum(int(k) * v for k, v in sizes.items()) >= 300  # 200 requests of 1 or 2 rows
    assert max(int(k) for k in sizes) > 2, f"no batching happened: {sizes}"
    assert max(int(k) for k in sizes) <= 8


def test_bad_requests_get_4xx_with_the_engines_message_and_the_replica_lives(served):
    model, server = served
    status, _, body = post(server.url, *codec.encode_request([torch.randn(1, 3, 7, 8)]))
    assert status == 400 and b"outside the compiled range" in body
    status, _, body = post(server.url, *codec.encode_request([torch.randn(1, 3, 8, 8).double()]))
    assert status == 400 and b"dtype" in body
    status, _, body = post(server.url, *codec.encode_request([torch.randn(9, 3, 8, 8)]))
    assert status == 400 and b"1..8" in body
    status, _, _ = post(server.url, b"{not json", codec.JSON)
    assert status == 400
    status, _, _ = post(server.url, b"hello", "text/plain")
    assert status == 415
    x = torch.randn(2, 3, 8, 8)
    status, media, body = post(server.url, *codec.encode_request([x]))
    assert status == 200
    with torch.no_grad():
        torch.testing.assert_close(codec.decode_response(body, media)[0], model(x), rtol=1e-4, atol=1e-5)


def test_python_handle(served):
    model, server = served
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(server(x)[0], model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(KilnError, match="outside the compiled range"):
        server(torch.randn(1, 3, 5, 5))
