"""Image-level evidence for each prompt label: what a classification answer is read from."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PresenceEvidence"]


class PresenceEvidence(nn.Module):
    """Presence logits of prompt tokens from three kinds of evidence.

    1. The token's own final state in the decoder queue.
    2. Attention pooling: the per-pixel embeddings averaged under the softmax of the token's
       own pixel output, i.e. what the image looks like where the token says its label is.
    3. The image's pooled backbone embedding (what a linear probe reads).

    They are concatenated and read by a small MLP; its output is added to the decoder's
    token-only presence logit.

    Args:
        dim: width of the decoder queue.
        mask_dim: width of the per-pixel embeddings.
        embed_dim: width of the pooled backbone embedding.
        hidden: width of the MLP.

    Example:
        >>> head = PresenceEvidence(dim=12, mask_dim=4, embed_dim=8)
        >>> head(torch.zeros(2, 3, 12), torch.zeros(2, 3, 4, 4, 1), torch.zeros(2, 4, 4, 4, 1),
        ...      torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self, *, dim: int, mask_dim: int, embed_dim: int, hidden: int = 64):
        super().__init__()
        self.embed_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, dim))
        self.pooled_norm = nn.LayerNorm(mask_dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim + mask_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(
        self, token_state: torch.Tensor, token_masks: torch.Tensor, pixel: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(B, P)``.

        Args:
            token_state: ``(B, P, dim)`` the prompt tokens' final states.
            token_masks: ``(B, P, X, Y, Z)`` their pixel outputs (logits).
            pixel: ``(B, mask_dim, X, Y, Z)`` per-pixel embeddings.
            embedding: ``(B, embed_dim)`` pooled backbone embedding.
        """
        b, p = token_state.shape[:2]
        attn = token_masks.flatten(2).float().softmax(-1)  # (B, P, N)
        pooled = torch.einsum("bpn,bdn->bpd", attn, pixel.flatten(2).float()).to(token_state.dtype)
        image = self.embed_proj(embedding).unsqueeze(1).expand(b, p, -1)
        return self.mlp(torch.cat([token_state, self.pooled_norm(pooled), image], dim=-1)).squeeze(-1)
