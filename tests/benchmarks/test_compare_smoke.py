"""benchmarks/compare.py's own models and INT8/FP8 calibration inputs, on the CPU (nothing timed)."""

import torch

from benchmarks import compare


def test_calibration_batches_look_like_the_benchmark_inputs():
    g = torch.Generator().manual_seed(0)
    images = compare.calibration_batch((torch.randn(2, 3, 8, 8).half(),), g)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.half
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    new_ids, new_mask = compare.calibration_batch((ids, mask), g)
    # Token ids stay within the vocabulary the inputs show, the attention mask stays all ones.
    assert new_ids.shape == ids.shape and int(new_ids.max()) <= int(ids.max()) and not torch.equal(new_ids, ids)
    assert torch.equal(new_mask, mask)


def test_bert_base_is_a_benchmark_case_with_a_large_batch_of_32():
    assert compare.batches_for("bert_base", "1,large") == [1, 32]
    seq, cfg = compare.ENCODERS["bert_base"]
    assert seq == 128 and (cfg.hidden, cfg.layers, cfg.ffn) == (768, 12, 3072)
