import torch, timm, kiln
from torch.profiler import profile, ProfilerActivity
torch.manual_seed(0)
m = timm.create_model("poolformer_s12", pretrained=False).eval().cuda().half()
x = torch.randn(128, 3, 224, 224, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    c = kiln.compile(m, inputs=[x], enabled_precisions={torch.half})
    for _ in range(5):
        c(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            c(x)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=110))
for e in c.engine_blocks.values():
    for s in e.plan.steps:
        print(s.layer.name, s.layer.kind, s.tactic, [str(e.plan.tensors[i].layout) if i in e.plan.tensors else None for i in s.layer.inputs][:2], str(e.plan.tensors[s.layer.outputs[0]].layout))
