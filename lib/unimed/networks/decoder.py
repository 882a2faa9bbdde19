"""The decomposed decoder: one queue of prompt tokens and learned queries, two outputs per item."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unimed.networks.layers import grouped_linear

__all__ = ["DecomposedDecoder", "DecoderLayer"]


class DecoderLayer(nn.Module):
    """Pre-norm transformer layer: self-attention over the queue, cross-attention to one
    memory level, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, h, key_padding_mask=pad, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.cross_attn(h + pos, memory + memory_pos, memory, need_weights=False)[0]
        return x + self.ffn(self.norm3(x))


def box_prior_logits(ref: torch.Tensor, num_bins: int, width: float = 0.05) -> torch.Tensor:
    """Coordinate-bin logits ``(..., 6, num_bins)`` peaked at reference boxes ``(..., 6)``.

    Added to the box head's logits, they make each query's box start at its reference (its
    proposal) so that the head only learns the correction.
    """
    bins = (torch.arange(num_bins, device=ref.device, dtype=ref.dtype) + 0.5) / num_bins
    return (-(((bins - ref[..., None]) / width) ** 2) / 2).clamp(min=-8.0)


class DecomposedDecoder(nn.Module):
    """Transformer decoder over the backbone's multi-scale features.

    The input queue is ``[prompt tokens..., learned queries...]``: the prompt is the request's
    task token followed by its label tokens, embedded from the token vocabulary. Every item of
    the queue yields a pixel output (a mask embedding) and a semantic output: class logits
    over the shared label space and coordinate-bin logits of a box for the learned queries, a
    presence logit for the label tokens.

    Args:
        vocab_size: size of the token vocabulary (prompt ids index it).
        num_queries: learned queries.
        num_classes: labels in the shared label space (class logits have one more, index 0
            meaning "no object").
        num_bins: coordinate bins per box coordinate.
        dim: width of the queue.
        mask_dim: width of the per-pixel embedding.
        heads: attention heads.
        layers: decoder layers; they attend to the memory levels in turn.

    Example:
        >>> dec = DecomposedDecoder(vocab_size=20, num_queries=4, num_classes=3, num_bins=8, dim=12, mask_dim=6,
        ...                         heads=2, layers=2)
        >>> mem = [torch.zeros(1, 5, 12)]
        >>> out = dec(mem, [torch.zeros(5, 12)], torch.tensor([[2, 7]]), torch.zeros(1, 2, dtype=torch.bool))
        >>> out["class_logits"].shape, out["box_logits"].shape, out["mask_embed"].shape
        (torch.Size([1, 4, 4]), torch.Size([1, 4, 6, 8]), torch.Size([1, 6, 6]))
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        num_queries: int,
        num_classes: int,
        num_bins: int,
        dim: int = 96,
        mask_dim: int = 32,
        heads: int = 4,
        layers: int = 3,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.num_queries, self.num_bins = num_queries, num_bins
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.prompt_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, mask_dim))
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.box_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 6 * num_bins))
        self.presence_head = nn.Linear(dim, 1)
        self.ref_pos = nn.Linear(6, dim)

    def forward(
        self,
        memory: Sequence[torch.Tensor],
        memory_pos: Sequence[torch.Tensor],
        prompt_ids: torch.Tensor,
        prompt_pad: torch.Tensor,
        query_content: torch.Tensor | None = None,
        query_boxes: torch.Tensor | None = None,
        point_tokens: torch.Tensor | None = None,
        point_pos: torch.Tensor | None = None,
        point_pad: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the queue through the decoder.

        Args:
            memory: flattened memory levels, ``(B, N_l, dim)`` each.
            memory_pos: position encodings of the levels, ``(N_l, dim)`` each.
            prompt_ids: ``(B, P)`` token ids: the task token, then label tokens, padded.
            prompt_pad: ``(B, P)`` True where ``prompt_ids`` is padding.
            query_content: ``(B, Q, dim)`` added to the learned queries (their proposals' features).
            query_boxes: ``(B, Q, 6)`` reference boxes of the queries; the boxes start there.
            point_tokens: ``(B, N, dim)`` prompt tokens of clicks and box corners
                (:class:`unimed.networks.click_prompt.ClickEncoder`), queued after the prompt;
                ``point_pos`` their position encodings, ``point_pad`` True at padding.

        Returns:
            ``mask_embed`` ``(B, P + N + Q, mask_dim)`` (``N = 0`` without points); ``class_logits`` ``(B, Q, num_classes + 1)``;
            ``box_logits`` ``(B, Q, 6, num_bins)``; ``presence_logits`` ``(B, P)``;
            ``prompt_state`` ``(B, P, dim)`` the prompt tokens' final states.
        """
        b, p = prompt_ids.shape
        queries = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        qpos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        if query_content is not None:
            queries = queries + query_content
        if query_boxes is not None:
            qpos = qpos + self.ref_pos(query_boxes)
        items, item_pos, item_pad = [self.token_embed(prompt_ids)], [self.prompt_pos.expand(b, p, -1)], [prompt_pad]
        if point_tokens is not None:
            items.append(point_tokens)
            item_pos.append(point_pos if point_pos is not None else torch.zeros_like(point_tokens))
            item_pad.append(point_pad if point_pad is not None else prompt_pad.new_zeros(point_tokens.shape[:2]))
        n = sum(t.shape[1] for t in items)
        x = torch.cat(items + [queries], dim=1)
        pos = torch.cat(item_pos + [qpos], 1)
        pad = torch.cat(item_pad + [prompt_pad.new_zeros(b, self.num_queries)], dim=1)
        for i, layer in enumerate(self.layers):
            level = i % len(memory)
            x = layer(x, pos, pad, memory[level], memory_pos[level].unsqueeze(0))
        x = self.norm(x)
        q = x[:, n:]
        return {
            "mask_embed": self.mask_head(x),
            "class_logits": grouped_linear(q, self.class_head),  # bit-stable when the label space grows
            "box_logits": self.box_head(q).reshape(b, self.num_queries, 6, self.num_bins)
            + (0 if query_boxes is None else box_prior_logits(query_boxes, self.num_bins)),
            "presence_logits": self.presence_head(x[:, :p]).squeeze(-1),
            "prompt_state": x[:, :p],
        }
