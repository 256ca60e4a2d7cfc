"""The attention a model runs on full K/V: one choice for the exporter
(kvtorch.export, whose traced attention calls it) and the cache
(kvtorch.cache, for prompts and for caches other than KVTorchCache).

sdpa everywhere, except where the model soft-caps its attention logits
(Gemma 2), which sdpa cannot: there the model's own eager attention.
"""
import sys
from typing import Any, Callable


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
