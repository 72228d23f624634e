import json, torch, triton
import torch.nn.functional as F
from kiln.engine.kernels import triton_depthwise as td
orig = td.block_sizes
def narrow_to(floor):
    def bs(channels, config=td.CONFIGS["triton_depthwise"]):
        bp, bc, warps = config
        narrow = min(bc, max(floor, triton.next_power_of_2(channels)))
        return bp * bc // narrow, narrow, warps
    return bs
attrs = lambda s: {"stride": [s, s], "padding": [1, 1], "dilation": [1, 1], "groups": 0, "epilogue": None}
for c, hw, s in [(8, 112, 1), (8, 112, 2), (12, 56, 1), (24, 112, 1), (16, 112, 1), (36, 56, 1)]:
    x = torch.randn(128, c, hw, hw, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, 3, 3, device="cuda", dtype=torch.half)
    taps = w[:, 0].permute(1, 2, 0).contiguous()
    row = {"c": c, "hw": hw, "s": s}
    row["cudnn"] = triton.testing.do_bench(lambda: F.conv2d(x, w, None, s, 1, 1, c), rep=50) * 1e3
    ref = F.conv2d(x, w, None, s, 1, 1, c)
    for floor in (16, 8, 4):
        td.block_sizes = narrow_to(floor)
        for name, cfg in td.CONFIGS.items():
            a = attrs(s)
            try:
                out = td.depthwise(x, taps, None, None, a, None, cfg)
                err = (out.float() - ref.float()).abs().max().item()
                row[f"{name}_f{floor}"] = round(triton.testing.do_bench(lambda: td.depthwise(x, taps, None, None, a, None, cfg), rep=50) * 1e3, 1)
                if err > 0.1: row[f"{name}_f{floor}_err"] = err
            except Exception as e:
                row[f"{name}_f{floor}"] = str(e)[:80]
    td.block_sizes = orig
    row["cudnn"] = round(row["cudnn"], 1)
    print(json.dumps(row), flush=True)
