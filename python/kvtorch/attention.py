"""The attention a model runs on full K/V: one choice for the exporter
(kvtorch.export, whose traced attention calls it) and the cache
(kvtorch.cache, for prompts and for caches other than KVTorchCache).

sdpa everywhere, except where the model soft-caps its attention logits
(Gemma 2), which sdpa cannot: there the model's own eager attention.
"""
import sys
from typing import Any, Callable

import torch


def implementation(config: Any) -> str:
    """"sdpa", or "eager" for a model that soft-caps attention logits."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"


def inner(module: Any) -> tuple[Callable[..., Any], bool]:
    """The attention function for a transformers attention module (its
    model's eager_attention_forward, or transformers' sdpa_attention_forward),
    and whether it is the eager one."""
    if implementation(module.config) == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward, True
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward, False


def boolean_mask(mask: torch.Tensor | None, q: int, t: int, device: torch.device) -> torch.Tensor:
    """A model's attention mask for the last q of t positions as booleans
    (True: attended): causal for None (sdpa's plain causal attention), an
    additive float mask read (0 where attended, -inf or the dtype's minimum
    where not)."""
    if mask is None:
        return torch.ones(q, t, dtype=torch.bool, device=device).tril(t - q)[None, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as eager attention adds it to the scores: 0 where
    attended, the dtype's minimum where not."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
