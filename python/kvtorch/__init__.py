"""kvtorch for PyTorch users: apply a kvtorch preset (compress/expand K and V,
a transformers cache that stores the latents), the compression hook of the
model contract, and the exporter of HuggingFace models
(python -m kvtorch.export). See docs/preset-format.md and
docs/model-contract.md in the kvtorch repository."""
from kvtorch.files import KVTorchError
from kvtorch.hook import KVHook
from kvtorch.preset import Latents, Preset, SplitLatents

__all__ = ["KVHook", "KVTorchError", "Latents", "Preset", "SplitLatents", "KVTorchCache"]


def __getattr__(name):
    if name == "KVTorchCache":  # needs transformers, imported on first use
        from kvtorch.cache import KVTorchCache

        return KVTorchCache
    raise AttributeError(name)
