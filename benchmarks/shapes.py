"""Real model shapes (random init) that the GPU benchmarks measure; no hub access needed."""

from __future__ import annotations

SHAPES: dict[str, dict] = {
    # t5-large (v1.1 style, as in the issue): d_model 1024, d_ff 2816, 24+24 layers, 16 heads, gated-gelu
    "t5-large": {"model_type": "t5", "vocab_size": 32128, "d_model": 1024, "d_ff": 2816, "d_kv": 64, "num_heads": 16,
                 "num_layers": 24, "num_decoder_layers": 24, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    # t5-xl (v1.1 style, 3B): d_model 2048, d_ff 5120, 24+24 layers, 32 heads, gated-gelu; FSDP's shape
    "t5-xl": {"model_type": "t5", "vocab_size": 32128, "d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_heads": 32,
              "num_layers": 24, "num_decoder_layers": 24, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    # KoBART (gogamza/kobart-base-v2): BART d_model 768, 6+6 layers, 16 heads, ffn 3072, vocab 30000
    "kobart": {"model_type": "bart", "vocab_size": 30000, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
               "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 3072,
               "decoder_ffn_dim": 3072, "max_position_embeddings": 1026},
    # bart-large: d_model 1024, 12+12 layers, 16 heads, ffn 4096, vocab 50265
    "bart-large": {"model_type": "bart", "vocab_size": 50265, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
                   "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
                   "decoder_ffn_dim": 4096, "max_position_embeddings": 1026},
    # Qwen2.5-1.5B (decoder-only, the Llama layout with grouped KV heads): 1536 wide, 28 layers, 12 heads / 2 KV heads,
    # FFN 8960, vocab 151936, tied embeddings; the speed harness's decoder-only shape
    "qwen2.5-1.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
                     "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                     "max_position_embeddings": 32768, "tie_word_embeddings": True},
    # a small Llama-architecture decoder (SOLAR/Qwen/Mistral family layout) for the Unsloth path
    "llama-small": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
                    "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 8,
                    "max_position_embeddings": 2048},
}
