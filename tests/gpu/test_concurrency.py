"""Many threads and streams calling one compiled module: every answer must be its own input's answer."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import kiln
from tests.gpu.models import MLP, ShiftedWindowAttention, SmallCNN, TinyAttention, init_bn
from tests.helpers import relative_error

CUDA = torch.device("cuda")
THREADS = 8
CALLS = 25
FP16_TOL = 2e-2


def _model_and_inputs(name: str):
    torch.manual_seed(0)
    if name == "cnn":
        model = init_bn(SmallCNN()).to(CUDA).eval()
        make = lambda: torch.randn(2, 3, 32, 32, device=CUDA)
    elif name == "attention":
        model = TinyAttention().to(CUDA).eval()
        make = lambda: torch.randn(2, 50, 64, device=CUDA)
    elif name == "window-attention":
        # Hand-written attention (fuse_attention), roll + window moves as row gathers (compose_gathers).
        model = ShiftedWindowAttention().to(CUDA).eval()
        make = lambda: torch.randn(2, 8, 8, 64, device=CUDA)
    else:
        model = MLP().to(CUDA).eval()
        make = lambda: torch.randn(4, 64, device=CUDA)
    return model, make


def _compile(model, x, **options):
    return kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1, **options)


def _hammer(compiled, model, make, own_streams: bool, threads: int = THREADS):
    """Each thread calls with inputs of its own, on its own stream or the default one; returns the worst error."""
    inputs = [[make() for _ in range(CALLS)] for _ in range(threads)]
    with torch.no_grad():
        refs = [[model(x) for x in per_thread] for per_thread in inputs]
    torch.cuda.synchronize()

    def worker(i):
        stream = torch.cuda.Stream() if own_streams else torch.cuda.current_stream()
        outs = []
        with torch.cuda.stream(stream), torch.no_grad():
            for x in inputs[i]:
                outs.append(compiled(x))
        stream.synchronize()
        return outs

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads)))
    torch.cuda.synchronize()
    return max(relative_error(o, r) for outs, rs in zip(results, refs) for o, r in zip(outs, rs))


@pytest.mark.parametrize("name", ["cnn", "attention", "window-attention", "mlp"])
@pytest.mark.parametrize("own_streams", [False, True], ids=["one-stream", "own-streams"])
def test_threads_get_their_own_answers(name, own_streams):
    model, make = _model_and_inputs(name)
    compiled = _compile(model, make())
    assert _hammer(compiled, model, make, own_streams) < FP16_TOL


def test_more_streams_than_contexts_share_buffers_correctly():
    model, make = _model_and_inputs("cnn")
    compiled = _compile(model, make(), max_execution_contexts=2)
    assert _hammer(compiled, model, make, own_streams=True) < FP16_TOL
    for engine in compiled.engine_blocks.values():
        assert len(engine.graphs.contexts) == 2


def test_each_stream_gets_a_context_up_to_the_bound():
    model, make = _model_and_inputs("mlp")
    compiled = _compile(model, make())
    streams = [torch.cuda.Stream() for _ in range(3)]
    with torch.no_grad():
        for s in streams:
            with torch.cuda.stream(s):
                compiled(make())
    torch.cuda.synchronize()
    for engine in compiled.engine_blocks.values():
        assert len(engine.graphs.contexts) == 3


def test_call_orders_with_the_callers_stream():
    """The input is written on the caller's stream behind a long kernel: the engine must wait for it."""
    model, make = _model_and_inputs("cnn")
    compiled = _compile(model, make())
    x = make()
    with torch.no_grad():
        compiled(x)  # record outside the timed part
        fresh = make()
        ref = model(fresh)
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)  # keeps s busy for tens of ms
            x.copy_(fresh)
            out = compiled(x)
            after = out * 1  # a reader of the output on the same stream
        s.synchronize()
    assert relative_error(after, ref) < FP16_TOL


def test_concurrent_first_calls_record_safely_at_many_shapes():
    """Threads that each bring a new shape to a ranged engine record graphs while others replay."""
    torch.manual_seed(0)
    model = MLP().to(CUDA).eval()
    spec = kiln.Input(min_shape=(1, 64), opt_shape=(8, 64), max_shape=(16, 64))
    compiled = kiln.compile(model, [spec], enabled_precisions={torch.half}, min_block_size=1)
    sizes = [1, 3, 5, 8, 11, 16, 2, 7]
    inputs = {b: torch.randn(b, 64, device=CUDA) for b in sizes}
    with torch.no_grad():
        refs = {b: model(x) for b, x in inputs.items()}

    def worker(b):
        s = torch.cuda.Stream()
        with torch.cuda.stream(s), torch.no_grad():
            outs = [compiled(inputs[b]) for _ in range(10)]
        s.synchronize()
        return max(relative_error(o, refs[b]) for o in outs)

    with ThreadPoolExecutor(len(sizes)) as pool:
        errors = list(pool.map(worker, sizes))
    assert max(errors) < FP16_TOL


def test_out_of_memory_while_recording_is_a_clear_error_and_releases_what_it_took():
    model, make = _model_and_inputs("mlp")
    x = torch.randn(1 << 20, 64, device=CUDA)  # the arena at this size is about 1 GB
    compiled = _compile(model, x)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    blocker = torch.empty(free - (512 << 20), dtype=torch.uint8, device=CUDA)  # leave 512 MB: recording needs more
    before = torch.cuda.memory_allocated()
    with torch.no_grad(), pytest.raises(kiln.OutOfMemoryError, match="recording a CUDA graph.*max_cuda_graphs"):
        compiled(x)
    # Not above the baseline: on the H100, after earlier tests in the same process, the error path also freed
    # ~0.8 MB allocated before the baseline (a library workspace), so equality failed on memory given back.
    assert torch.cuda.memory_allocated() <= before
    del blocker
    torch.cuda.empty_cache()
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < FP16_TOL
