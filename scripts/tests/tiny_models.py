"""Tiny random-weight configs of the architectures export_hf.py supports."""
import torch


def tiny_config(arch, vocab_size=512):
    from transformers import DeepseekV2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=16)
    if arch == "deepseek_v2":
        common["num_key_value_heads"] = common["num_attention_heads"]  # MLA expands the latent to every head
        return DeepseekV2Config(**common, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8,
                                qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                                n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=2)
    raise ValueError(arch)


def tiny_model(arch, seed=0, vocab_size=512):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size), dtype=torch.float32)
    return model.eval()
