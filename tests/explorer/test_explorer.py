"""The engine explorer: one self-contained HTML file, checked by a parser and rendered in headless Chromium."""

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import kiln
from kiln.explorer import to_html, write_html
from kiln.explorer.model import explorer_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.cumsum(h, dim=1)  # kept in PyTorch below, so the page has a fallback op to show
        h = torch.sigmoid(h) * h + 1.0
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    return kiln.compile(Net().eval(), inputs=[kiln.Input((2, 3, 8, 8))], min_block_size=1, torch_executed_ops=["aten.cumsum"])


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external, self.scripts, self.current = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.external.append((tag, attrs[key]))
        if tag == "link":
            self.external.append((tag, attrs))
        if tag == "script":
            self.current = attrs.get("type", "")

    def handle_data(self, data):
        if self.current is not None:
            self.scripts.append((self.current, data))
            self.current = None


def test_page_is_self_contained_and_carries_the_engine(compiled):
    page = to_html(compiled, "net")
    parser = PageParser()
    parser.feed(page)
    assert parser.external == [], "the page must not load anything from outside"
    assert "@import" not in page and "url(" not in page and "fetch(" not in page and "XMLHttpRequest" not in page
    data = json.loads(next(text for kind, text in parser.scripts if kind == "application/json"))
    assert any(kind == "" and "drawGraph" in text for kind, text in parser.scripts)
    block = data["blocks"][0]
    layer = block["layers"][0]
    for key in ("kind", "tactic", "candidates", "precision", "inputs", "outputs", "source"):
        assert key in layer
    assert layer["inputs"][0]["shape"] == ["2", "3", "8", "8"] and layer["inputs"][0]["dtype"] == "float32"
    assert block["memory"]["arena_bytes"] > 0 and block["memory"]["weight_bytes"] > 0
    fallback = [n for n in data["graph"] if n["kind"] == "pytorch"]
    assert any("cumsum" in n["label"] and "torch_executed_ops" in n["reason"] for n in fallback)
    assert {r["where"] for r in data["partition"]} == {"engine", "pytorch"}


def test_script_end_tags_in_names_cannot_break_the_page(compiled):
    page = to_html(compiled, "</script><script>alert(1)</script>")
    assert page.count("<script") == 2


def test_memory_matches_the_plan(compiled):
    data = explorer_data(compiled)
    for block, (name, engine) in zip(data["blocks"], compiled.engine_blocks.items()):
        assert block["name"] == name
        assert block["memory"]["arena_bytes"] == engine.plan.arena.size
        assert len(block["layers"]) == len(engine.plan.steps)
        assert [layer["tactic"] for layer in block["layers"]] == [s.tactic for s in engine.plan.steps]


def test_fused_layers_are_marked(compiled):
    import copy

    from kiln.explorer.model import block_json

    plan = copy.copy(next(iter(compiled.engine_blocks.values())).plan)
    plan.steps = [copy.deepcopy(s) for s in plan.steps]
    plan.steps[0].layer.source = "convolution (convolution.default) + relu (relu.default)"
    layers = block_json("b", plan)["layers"]
    assert layers[0]["fused"] and not any(layer["fused"] for layer in layers[1:])


def chromium(*args: str, profile: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Any attempt to reach the network fails loudly instead of hanging.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package: chromium)")
def test_page_renders_in_headless_chromium_without_console_errors(compiled, tmp_path):
    path = tmp_path / "report.html"
    write_html(compiled, path, "net")
    url = f"file://{path}"
    done = chromium("--dump-dom", url, profile=str(tmp_path / "profile-dom"))
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    for text in ("Kiln engine explorer: net", "Engine block _engine_block_0", "PyTorch fallback", "aten.cumsum", "Partition report"):
        assert text in dom, text
    assert dom.count("<tr") >= len(compiled.report.rows) + 1  # the partition table was filled in by the script
    assert "activation arena" in dom and "<svg" in dom
    shot = tmp_path / "report.png"
    done = chromium("--window-size=1400,1000", f"--screenshot={shot}", url, profile=str(tmp_path / "profile-shot"))
    assert done.returncode == 0 and os.path.getsize(shot) > 10_000
