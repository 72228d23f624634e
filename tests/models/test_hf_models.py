"""Hugging Face transformers models, built from tiny configs with random weights (no download).

Each compiles into one engine block with nothing left in PyTorch, and matches eager.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import kiln  # noqa: E402
from tests.helpers import assert_outputs_match, check_against_eager  # noqa: E402

VOCAB = 100
TEXT = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": VOCAB}
VISION = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def _ids(low: int = 0):
    return torch.randint(low, VOCAB, (2, 8))


def _mask():
    # The second sequence is padded: the mask code paths (index with two index tensors, cumsum) are taken.
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    return mask


def gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64, use_cache=False)
    return transformers.GPT2Model(config), (_ids(),)


def llama():
    config = transformers.LlamaConfig(**TEXT, num_key_value_heads=1, use_cache=False)
    return transformers.LlamaModel(config), (_ids(),)


def bert():
    return transformers.BertModel(transformers.BertConfig(**TEXT)), (_ids(), _mask())


def distilbert():
    config = transformers.DistilBertConfig(n_layers=2, dim=32, hidden_dim=64, n_heads=2, vocab_size=VOCAB)
    return transformers.DistilBertModel(config), (_ids(), _mask())


def roberta():
    # Position ids come from a cumsum over the non-padding tokens; ids >= 3 are not the padding id.
    return transformers.RobertaModel(transformers.RobertaConfig(**TEXT)), (_ids(3), _mask())


def t5_encoder():
    config = transformers.T5Config(num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=VOCAB)
    return transformers.T5EncoderModel(config), (_ids(), _mask())


def vit():
    return transformers.ViTModel(transformers.ViTConfig(**VISION)), (torch.randn(1, 3, 32, 32),)


def clip_vision():
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)), (torch.randn(1, 3, 32, 32),)


def whisper_encoder():
    config = transformers.WhisperConfig(
        encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
        vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    # The encoder takes 2 * max_source_positions frames of num_mel_bins features.
    return transformers.models.whisper.modeling_whisper.WhisperEncoder(config), (torch.randn(1, 8, 32),)


MODELS = [gpt2, llama, bert, distilbert, roberta, t5_encoder, vit, clip_vision, whisper_encoder]


@pytest.mark.parametrize("make", MODELS, ids=[m.__name__ for m in MODELS])
def test_hf_model_is_one_engine_block_and_matches_eager(make):
    torch.manual_seed(0)
    model, args = make()
    compiled = check_against_eager(model.eval(), *args)
    assert len(compiled.report.blocks) == 1, compiled.report.table()


class LastHiddenState(torch.nn.Module):
    """With use_cache=True the model also returns its cache object; the test reads the hidden states."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids, use_cache=True).last_hidden_state


def test_gpt2_with_its_cache_code_over_a_range_from_one_token():
    # The cache code concatenates a 1-D empty tensor with the keys (torch.cat skips it).
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64)
    model = LastHiddenState(transformers.GPT2Model(config)).eval()
    spec = kiln.Input(min_shape=(1, 1), opt_shape=(2, 8), max_shape=(4, 32), dtype=torch.int64)
    compiled = kiln.compile(model, [spec], require_full_compilation=True)
    assert len(compiled.report.blocks) == 1
    for shape in [(1, 1), (3, 17), (4, 32)]:
        ids = torch.randint(0, VOCAB, shape)
        with torch.no_grad():
            assert_outputs_match(compiled(ids), model(ids))
