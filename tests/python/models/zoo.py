"""The model zoo of the conformance suite: tiny Hugging Face models (hidden size 64, 2 layers,
random weights, built from configs: nothing is downloaded) and the inputs each takes.

Every builder seeds torch first, so two fresh processes build identical weights."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Tuple

import torch
import transformers as hf

VOCAB = 256
HIDDEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _decoder(config_class: Any, model_class: Any, **extra: Any) -> torch.nn.Module:
    config = config_class(vocab_size=VOCAB, max_position_embeddings=128, **HIDDEN, **extra)
    return model_class(config)


def llama() -> torch.nn.Module:
    return _decoder(hf.LlamaConfig, hf.LlamaForCausalLM, num_key_value_heads=2)


def qwen2() -> torch.nn.Module:
    return _decoder(hf.Qwen2Config, hf.Qwen2ForCausalLM, num_key_value_heads=2)


def phi() -> torch.nn.Module:
    return _decoder(hf.PhiConfig, hf.PhiForCausalLM)


def gpt2() -> torch.nn.Module:
    config = hf.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    return hf.GPT2LMHeadModel(config)


def bert() -> torch.nn.Module:
    config = hf.BertConfig(vocab_size=VOCAB, max_position_embeddings=128, **HIDDEN)
    return hf.BertModel(config)


def distilbert() -> torch.nn.Module:
    config = hf.DistilBertConfig(
        vocab_size=VOCAB, max_position_embeddings=128, dim=64, hidden_dim=128, n_layers=2, n_heads=4
    )
    return hf.DistilBertModel(config)


def t5() -> torch.nn.Module:
    config = hf.T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    return hf.T5ForConditionalGeneration(config)


def vit() -> torch.nn.Module:
    config = hf.ViTConfig(image_size=32, patch_size=8, num_channels=3, **HIDDEN)
    return hf.ViTModel(config)


MODELS: Dict[str, Callable[[], torch.nn.Module]] = {
    "llama": llama,
    "qwen2": qwen2,
    "phi": phi,
    "gpt2": gpt2,
    "bert": bert,
    "distilbert": distilbert,
    "t5": t5,
    "vit": vit,
}


# The device and dtype the suite runs in: the CPU in float32 by default; the GPU host runs
# MEGACACHE_MODELS_DEVICE=cuda MEGACACHE_MODELS_DTYPE=bfloat16.
DEVICE = os.environ.get("MEGACACHE_MODELS_DEVICE", "cpu")
DTYPE = getattr(torch, os.environ.get("MEGACACHE_MODELS_DTYPE", "float32"))


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    # Dropout off, so that two processes compute the same thing.
    model.eval()
    return model.to(device=DEVICE, dtype=DTYPE)


def inputs(name: str, length: int, *, labels: bool = False) -> Tuple[Dict[str, Any], int]:
    """Keyword inputs for a batch of 2 sequences of `length` tokens (ViT: images), and the
    index of the dimension that grows with the length (for mark_dynamic)."""
    generator = torch.Generator().manual_seed(length)
    if name == "vit":
        pixels = torch.rand(2, 3, 32, 32, generator=generator)
        return {"pixel_values": pixels.to(device=DEVICE, dtype=DTYPE)}, -1
    ids = torch.randint(0, VOCAB, (2, length), generator=generator).to(DEVICE)
    kwargs: Dict[str, Any] = {"input_ids": ids}
    if name == "t5":
        kwargs["decoder_input_ids"] = ids[:, : max(1, length // 2)].clone()
    if labels and name in ("llama", "qwen2", "phi", "gpt2"):
        kwargs["labels"] = ids
    if labels and name == "t5":
        kwargs["labels"] = ids[:, : max(1, length // 2)].clone()
        del kwargs["decoder_input_ids"]
    return kwargs, 1
