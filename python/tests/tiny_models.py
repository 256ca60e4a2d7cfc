"""Tiny random-weight configs of the architectures kvtorch.export supports."""
import torch


def tiny_config(arch, vocab_size=512):
    from transformers import (DeepseekV2Config, Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config,
                              Qwen3Config)

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
    if arch in ("gemma2", "gemma3_text"):
        # One KV head (as Gemma 3 270M and Gemma 2 2B's groups), a sliding
        # window shorter than the test sequences, soft-capping where Gemma 2 has it.
        gemma = dict(common, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                     layer_types=["sliding_attention", "full_attention"])
        if arch == "gemma2":
            return Gemma2Config(**gemma, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        return Gemma3TextConfig(**gemma, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}})
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
    if arch == "gemma2":  # sdpa (transformers' default) ignores Gemma 2's attention soft-capping
        model.set_attn_implementation("eager")
    return model.eval()


def random_basis(heads, dim, rank, joint, seed):
    """A random orthonormal basis of rank r over the joined heads (joint) or
    per head (block diagonal): (down, up) as the hook holds them [E, E], and
    compact (down [E, r'], up [r', E]) for project_eager; and a mean [E]."""
    g = torch.Generator().manual_seed(seed)
    e = heads * dim
    full = torch.zeros(e, e)
    if joint:
        q, _ = torch.linalg.qr(torch.randn(e, e, generator=g))
        full[:, :rank] = q[:, :rank]
        compact = q[:, :rank]
    else:
        cols = []
        for h in range(heads):
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
            full[h * dim:(h + 1) * dim, h * dim:h * dim + rank] = q[:, :rank]
            cols.append(full[:, h * dim:h * dim + rank])
        compact = torch.cat(cols, dim=1)
    return full, full.T.contiguous(), compact, compact.T.contiguous(), torch.randn(e, generator=g) * 0.1
