"""Slot-based key/value cache shared between a decoder's past inputs and present outputs.

The genai-built GroupQueryAttention graph updates the cache in place when a past input and its
present output are bound to the same buffer (``past_present_share_buffer``). One buffer per layer
and per key/value holds ``max_batch`` slots of ``context`` positions, so a decode step never
copies the cache: the running sequences occupy slots ``0..n-1`` and the step binds that
contiguous prefix. When a sequence leaves, the last running sequence moves into its slot (one
sequence's filled positions are copied, nothing else).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from services.inference.model_info import GraphLayout


class KvSlots:
    """Preallocated per-layer KV buffers of shape [max_batch, kv_heads, context, head_size]."""

    def __init__(self, layout: GraphLayout, max_batch: int, context: int) -> None:
        self.layout = layout
        self.max_batch = max_batch
        self.context = context
        shape = (max_batch, layout.num_kv_heads, context, layout.head_size)
        # np.zeros maps pages lazily: memory is committed only as slots fill.
        self._keys = [np.zeros(shape, np.float32) for _ in range(layout.num_layers)]
        self._values = [np.zeros(shape, np.float32) for _ in range(layout.num_layers)]

    @property
    def bytes_per_token(self) -> int:
        lay = self.layout
        return 2 * lay.num_layers * lay.num_kv_heads * lay.head_size * 4

    def bind(self, binding: ort.IOBinding, first: int, count: int) -> None:
        """Bind slots ``first..first+count-1`` as both past input and present output."""
        for layer in range(self.layout.num_layers):
            past_k, past_v = self.layout.past_names(layer)
            present_k, present_v = self.layout.present_names(layer)
            for past, present, buf in (
                (past_k, present_k, self._keys[layer]),
                (past_v, present_v, self._values[layer]),
            ):
                value = ort.OrtValue.ortvalue_from_numpy(buf[first : first + count])
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        for buf in (*self._keys, *self._values):
            buf[dst, :, :length] = buf[src, :, :length]

    def read(self, slot: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of positions ``start..stop-1`` of one slot: [layers, kv_heads, stop-start, head] each."""
        keys = np.stack([buf[slot, :, start:stop] for buf in self._keys])
        values = np.stack([buf[slot, :, start:stop] for buf in self._values])
        return keys, values

    def write(self, slot: int, start: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Store KV blocks shaped like :meth:`read`'s at positions ``start..`` of one slot."""
        stop = start + keys.shape[2]
        for layer in range(self.layout.num_layers):
            self._keys[layer][slot, :, start:stop] = keys[layer]
            self._values[layer][slot, :, start:stop] = values[layer]
