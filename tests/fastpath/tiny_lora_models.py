"""Tiny random-init T5/BART/Llama models with LoRA (or QLoRA), a fixed batch, and their loss and LoRA gradients:
what the fast-path tests compare against plain peft."""

from __future__ import annotations

import torch

from lit_qsum.backends.loader import ModelSpec, load_model
from lit_qsum.settings import LoraSettings, QuantizationSettings

TINY = {
    "t5": {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "bart": {"model_type": "bart", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
             "decoder_ffn_dim": 128, "max_position_embeddings": 128},
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
}


def load_tiny(arch: str, backend: str, checkpointing: bool, dropout: float):
    spec = ModelSpec(
        model_config=TINY[arch], tokenizer="lit_qsum:demo", backend=backend,
        lora=LoraSettings(rank=8, alpha=16, dropout=dropout), quantization=QuantizationSettings(),
        gradient_checkpointing=checkpointing, init_seed=3,
    )
    loaded = load_model(spec, device=torch.device("cpu"))
    model = loaded.model.train()
    torch.manual_seed(11)
    with torch.no_grad():  # peft starts B at zero, which would make every A gradient zero: test a trained state
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return loaded, model


def tiny_batch(arch: str, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(5, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = torch.randint(5, vocab, (3, 7), generator=gen) if arch != "llama" else ids.clone()
    labels[2, 5:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model: torch.nn.Module, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads
