"""Gates on attention heads and FFN sublayers (forward hooks): importance scores are |dL/d gate| (Michel et al.,
2019), and ``share`` routes each task's forward pass through its ticket's gates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ticketctl.model.units import layout

if TYPE_CHECKING:
    import torch


class Gates:
    """Forward hooks multiplying each head's context vector (input of ``attention.output.dense``) and each FFN's
    output by a gate. ``heads``: (layers, heads) or per example (batch, layers, heads); ``ffn``: (layers,) or
    (batch, layers). ``None`` disables a kind of gate."""

    def __init__(self, model):
        self.lay = layout(model)
        self.heads: torch.Tensor | None = None
        self.ffn: torch.Tensor | None = None
        self.handles = []
        for i in range(self.lay.num_layers):
            self.handles.append(self.lay.module(i, "o").register_forward_pre_hook(self._head_hook(i)))
            self.handles.append(self.lay.module(i, "f").register_forward_hook(self._ffn_hook(i)))

    def _head_hook(self, layer: int):
        def hook(module, args):
            if self.heads is None:
                return None
            x = args[0]
            g = self.heads[..., layer, :].to(x.dtype)  # (H,) or (B, H)
            shape = x.shape
            x = x.view(*shape[:-1], self.lay.num_heads, -1)
            g = g.view(-1, *([1] * (x.dim() - 3)), self.lay.num_heads, 1) if g.dim() == 2 else g.view(-1, 1)
            return ((x * g).view(shape),) + tuple(args[1:])

        return hook

    def _ffn_hook(self, layer: int):
        def hook(module, args, output):
            if self.ffn is None:
                return None
            g = self.ffn[..., layer].to(output.dtype)
            return output * (g.view(-1, *([1] * (output.dim() - 1))) if g.dim() == 1 else g)

        return hook

    def set(self, heads: torch.Tensor | None, ffn: torch.Tensor | None) -> None:
        self.heads, self.ffn = heads, ffn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
