import torch
import tests.quantize.test_fused_quantize as t
orig = t.assert_close_8_bit
def dbg(out, ref):
    o, r = out.float(), ref.float()
    bad = (o - r).abs() > 0
    print("mismatches", int(bad.sum()), "of", o.numel())
    idx = bad.nonzero()[:10]
    for i in idx:
        i = tuple(i.tolist())
        print(i, "out", o[i].item(), "ref", r[i].item())
    try:
        orig(out, ref)
        print("OK")
    except AssertionError as e:
        print("FAIL", e)
t.assert_close_8_bit = dbg
t.test_reduction_writes_its_result_and_the_quantized_copy("group_norm", "fp8")
