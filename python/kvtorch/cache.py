"""KVTorchCache: a transformers cache that stores a preset's latents (see
kvtorch.preset for the storage format)."""
import torch

from kvtorch.preset import Preset  # noqa: F401 - the type the cache is built from


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # transformers is optional
    DynamicCache = None


if DynamicCache is not None:

    class KVTorchLayer(DynamicLayer):
        """One layer of KVTorchCache: stores Latents, returns expanded K/V."""

        def __init__(self, preset, layer, rotary=None):
            super().__init__()
            self.preset, self.layer, self.rotary = preset, layer, rotary
            self.zk = self.zv = None
            self.sink_k = self.sink_v = None  # the first sink tokens, exact (float16)
            self.length = 0

        def _rope(self, x, start):
            pos = torch.arange(start, start + x.shape[-2], device=x.device)[None, :].expand(x.shape[0], -1)
            cos, sin = self.rotary(x, pos)
            return cos[:, None].to(torch.float32), sin[:, None].to(torch.float32)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            dtype = key_states.dtype
            start = self.length
            self.length += key_states.shape[-2]
            # The first preset.sinks positions stay exact.
            n_sink = max(0, min(self.preset.sinks - start, key_states.shape[-2]))
            if n_sink:
                sk, sv = key_states[:, :, :n_sink].to(torch.float16), value_states[:, :, :n_sink].to(torch.float16)
                self.sink_k = sk if self.sink_k is None else torch.cat([self.sink_k, sk], dim=-2)
                self.sink_v = sv if self.sink_v is None else torch.cat([self.sink_v, sv], dim=-2)
                key_states, value_states = key_states[:, :, n_sink:], value_states[:, :, n_sink:]
                start += n_sink
            if key_states.shape[-2]:
                k = key_states.float()
                if self.rotary is not None:  # pre_rope preset: un-rotate the incoming keys
                    cos, sin = self._rope(k, start)
                    k = k * cos - _rotate_half(k) * sin
                zk = self.preset.compress(self.layer, "k", k)
                zv = self.preset.compress(self.layer, "v", value_states)
                self.zk = zk if self.zk is None else self.zk.cat(zk)
                self.zv = zv if self.zv is None else self.zv.cat(zv)
            keys, values = [], []
            if self.sink_k is not None:
                keys.append(self.sink_k.float())
                values.append(self.sink_v.float())
            if self.zk is not None:
                k = self.preset.expand(self.layer, "k", self.zk)
                if self.rotary is not None:
                    first = 0 if self.sink_k is None else self.sink_k.shape[-2]
                    cos, sin = self._rope(k, first)
                    k = k * cos + _rotate_half(k) * sin
                keys.append(k)
                values.append(self.preset.expand(self.layer, "v", self.zv))
            # Keep only empty placeholders: the latents are the cache.
            self.keys = self.values = torch.empty(0, dtype=dtype, device=key_states.device)
            return torch.cat(keys, dim=-2).to(dtype), torch.cat(values, dim=-2).to(dtype)

        def get_seq_length(self):
            return self.length

        def _unsupported(self, *args, **kwargs):
            raise NotImplementedError("KVTorchCache supports appending tokens (prefill and greedy or sampled "
                                      "generation); cropping, beam reordering and batch selection are not implemented")

        crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _unsupported

        def nbytes(self):
            n = (self.zk.nbytes + self.zv.nbytes) if self.zk is not None else 0
            if self.sink_k is not None:
                n += self.sink_k.numel() * self.sink_k.element_size() + self.sink_v.numel() * self.sink_v.element_size()
            return n

    class KVTorchCache(DynamicCache):
        """A transformers cache that stores kvtorch latents instead of full K/V."""

        def __init__(self, preset, model):
            super().__init__(config=model.config)
            rotary = None
            if preset.kv_source == "pre_rope":
                rotary = model.model.rotary_emb
            self.layers = [KVTorchLayer(preset, i, rotary) for i in range(len(preset.layers))]

        def nbytes(self):
            """Bytes held, all layers: latents, scales and the sink tokens."""
            return sum(layer.nbytes() for layer in self.layers)
