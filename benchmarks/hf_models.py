"""Hugging Face transformers models for the benchmarks, built from their config classes with random weights.

Nothing is downloaded: each case builds its model from a config (the published base/small sizes,
or a tiny one for CPU smoke runs) and makes its own inputs. A case is named `hf:<name>` on the
command line of benchmarks/compare.py, beside timm names.

Each model is wrapped to take its inputs as tensors and return the last hidden state, so every
benchmark mode calls and compares it the same way as a timm model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PREFIX = "hf:"
SEQ_LEN = 128  # tokens per sequence for the text models
IMAGE = 224
TINY_SEQ_LEN = 8
TINY_IMAGE = 32
# 'large' batch of benchmarks/compare.py for these models: 32 sequences of 128 tokens (BERT's usual serving batch).
LARGE_BATCH = 32


@dataclass(frozen=True)
class HFCase:
    name: str
    description: str
    build: Callable[[bool], torch.nn.Module]  # tiny -> the wrapped model (eval mode, float32, CPU)
    inputs: Callable[[int, bool, torch.device, torch.dtype], tuple[torch.Tensor, ...]]  # batch, tiny, device, float dtype


HF_CASES: dict[str, HFCase] = {}
# The cases `--hf` runs (the list); others (distilbert, roberta) by name.
DEFAULT = ["bert", "gpt2", "llama", "t5-encoder", "vit", "clip-vision", "whisper-encoder"]


def hf_case(name: str, description: str, inputs: Callable):
    def register(build: Callable[[bool], torch.nn.Module]):
        HF_CASES[name] = HFCase(name, description, build, inputs)
        return build

    return register


class LastHiddenState(torch.nn.Module):
    """Calls the model with its inputs by name and returns `last_hidden_state` (one tensor, as timm models return)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        values = (first, second)[: len(self.names)]
        return self.model(**dict(zip(self.names, values))).last_hidden_state


def _transformers():
    import transformers  # imported on use: timm-only runs need not have it

    return transformers


def _text_inputs(with_mask: bool, vocab: int, low: int = 0):
    """Token ids (and a padding mask: every other sequence ends in 1/4 padding, so the mask code does real work)."""

    def make(batch: int, tiny: bool, device: torch.device, dtype: torch.dtype):
        seq = TINY_SEQ_LEN if tiny else SEQ_LEN
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(low, vocab_size(vocab, tiny), (batch, seq), generator=generator).to(device)
        if not with_mask:
            return (ids,)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[1::2, seq - seq // 4 :] = 0
        return ids, mask.to(device)

    return make


def _image_inputs(channels: int = 3):
    def make(batch: int, tiny: bool, device: torch.device, dtype: torch.dtype):
        size = TINY_IMAGE if tiny else IMAGE
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, channels, size, size, generator=generator).to(device, dtype),)

    return make


def vocab_size(full: int, tiny: bool) -> int:
    return 100 if tiny else full


# Tiny sizes shared by the text and vision configs (CPU smoke runs): 2 layers, 32 wide.
_TINY_TEXT = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 100}
_TINY_VISION = {
    "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
    "image_size": TINY_IMAGE, "patch_size": 8,
}  # fmt: skip


@hf_case("bert", "BERT-base (12 layers, 768 wide), padding mask", _text_inputs(True, 30522))
def bert(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    config = t.BertConfig(**_TINY_TEXT) if tiny else t.BertConfig()
    return LastHiddenState(t.BertModel(config, add_pooling_layer=False), ("input_ids", "attention_mask"))


@hf_case("distilbert", "DistilBERT-base (6 layers, 768 wide), padding mask", _text_inputs(True, 30522))
def distilbert(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    small = {"n_layers": 2, "dim": 32, "hidden_dim": 64, "n_heads": 2, "vocab_size": 100}
    config = t.DistilBertConfig(**small) if tiny else t.DistilBertConfig()
    return LastHiddenState(t.DistilBertModel(config), ("input_ids", "attention_mask"))


@hf_case("roberta", "RoBERTa-base (12 layers, 768 wide), padding mask", _text_inputs(True, 50265, low=3))
def roberta(tiny: bool) -> torch.nn.Module:
    # Ids from 3 up: RoBERTa's position ids count the tokens that are not its padding id (1).
    t = _transformers()
    config = t.RobertaConfig(**_TINY_TEXT) if tiny else t.RobertaConfig(vocab_size=50265, max_position_embeddings=514)
    return LastHiddenState(t.RobertaModel(config, add_pooling_layer=False), ("input_ids", "attention_mask"))


@hf_case("gpt2", "GPT-2 small (12 layers, 768 wide), no cache", _text_inputs(False, 50257))
def gpt2(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    small = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100, "n_positions": 64, "bos_token_id": 1, "eos_token_id": 2}
    config = t.GPT2Config(**small, use_cache=False) if tiny else t.GPT2Config(use_cache=False)
    return LastHiddenState(t.GPT2Model(config), ("input_ids",))


@hf_case("llama", "Llama-style decoder (12 layers, 768 wide, 12 heads / 4 KV heads, SwiGLU 2048), no cache", _text_inputs(False, 32000))
def llama(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    if tiny:
        config = t.LlamaConfig(**_TINY_TEXT, num_key_value_heads=1, use_cache=False)
    else:
        config = t.LlamaConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
            vocab_size=32000, max_position_embeddings=2048, use_cache=False,
        )  # fmt: skip
    return LastHiddenState(t.LlamaModel(config), ("input_ids",))


@hf_case("t5-encoder", "T5-base encoder (12 layers, 768 wide), padding mask", _text_inputs(True, 32128))
def t5_encoder(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    small = {"num_layers": 2, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16, "vocab_size": 100}
    config = t.T5Config(**small) if tiny else t.T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64)
    return LastHiddenState(t.T5EncoderModel(config), ("input_ids", "attention_mask"))


@hf_case("vit", "ViT-base/16 at 224x224", _image_inputs())
def vit(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    config = t.ViTConfig(**_TINY_VISION) if tiny else t.ViTConfig()
    return LastHiddenState(t.ViTModel(config, add_pooling_layer=False), ("pixel_values",))


@hf_case("clip-vision", "CLIP ViT-B/32 vision tower at 224x224", _image_inputs())
def clip_vision(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    config = t.CLIPVisionConfig(**_TINY_VISION) if tiny else t.CLIPVisionConfig()
    return LastHiddenState(t.CLIPVisionModel(config), ("pixel_values",))


def _whisper_inputs(batch: int, tiny: bool, device: torch.device, dtype: torch.dtype):
    # The encoder takes 2 * max_source_positions frames (30 s of audio for the real models) of num_mel_bins features.
    mels, frames = (8, 32) if tiny else (80, 3000)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, mels, frames, generator=generator).to(device, dtype),)


@hf_case("whisper-encoder", "Whisper-base encoder (6 layers, 512 wide, 30 s of audio)", _whisper_inputs)
def whisper_encoder(tiny: bool) -> torch.nn.Module:
    t = _transformers()
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
    if tiny:
        sizes = {"encoder_layers": 2, "d_model": 32, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "num_mel_bins": 8,
                 "max_source_positions": 16, "vocab_size": 100}  # fmt: skip
    else:
        sizes = {"encoder_layers": 6, "d_model": 512, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048, "num_mel_bins": 80,
                 "max_source_positions": 1500}  # fmt: skip
    config = t.WhisperConfig(**sizes, **special)
    encoder = t.models.whisper.modeling_whisper.WhisperEncoder(config)
    return LastHiddenState(encoder, ("input_features",))


def is_hf(name: str) -> bool:
    return name.startswith(PREFIX)


def case_of(name: str) -> HFCase:
    key = name[len(PREFIX) :] if is_hf(name) else name
    if key not in HF_CASES:
        raise ValueError(f"unknown Hugging Face case {name!r}; choose from {', '.join(PREFIX + n for n in HF_CASES)}")
    return HF_CASES[key]


def build(
    name: str, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, tiny: bool = False
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(the model in eval mode on `device` in `dtype`, its inputs at `batch`); the same weights for the same name."""
    case = case_of(name)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds faster per base-size model than on the CPU
        model = case.build(tiny).eval().to(dtype)
    return model, case.inputs(batch, tiny, torch.device(device), dtype)


def default_names() -> list[str]:
    return [PREFIX + n for n in DEFAULT]
