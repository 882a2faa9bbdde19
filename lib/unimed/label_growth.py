"""Growing a network's label space: a new label is a new token, not a new head.

:func:`add_label` appends a label to a :class:`~unimed.networks.unimednet.UniMed`'s registry
and grows every piece sized by the label space, so that the old labels answer exactly as
before (same weights, same token rows):

- the registry: the label gets the next free label-map value (:meth:`LabelRegistry.next_id`)
  and the next class index (``K + 1``);
- the token vocabulary: one more label token (after the old ones) and one more mask
  reference. The task and old label tokens keep their ids; the coordinate and mask tokens
  move up by one, and the decoder's token embedding is remapped with them, so that every old
  token keeps its row (ids are looked up from the vocabulary at run time, never stored);
- the decoder's token embedding (a new row), the class head (a new output row) and the
  proposal head's heat map (a new channel);
- the config: ``labels`` and ``label_definitions``, so a saved checkpoint carries the grown
  space and loads in a fresh process.

The new token starts from the annotated examples (:func:`fit_label_token`): the per-pixel
embeddings pooled inside and outside the structure (:func:`pool_prototype`) pick the existing
label token whose pixel output best separates them, and a few gradient steps on that token's
row alone (the rest of the network frozen) map the prototype into the token space: the
token's mask logits rise inside the structure and fall outside.
"""

from __future__ import annotations

import colorsys
from dataclasses import replace
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimed.labels import TISSUE, Code, Label, LabelRegistry, label_to_dict
from unimed.networks.layers import Conv
from unimed.networks.unimednet import UniMed
from unimed.task_names import Task
from unimed.vocabulary import TokenVocabulary

__all__ = ["add_label", "canonical_name", "pool_prototype", "fit_label_token"]

#: the heat map's prior of 1% per cell (as :class:`~unimed.networks.proposals.ProposalHead` starts)
_HEAT_PRIOR_BIAS = -4.59511985013459


def canonical_name(name: str) -> str:
    """A label name as the registry spells names: stripped, lower case, snake_case.

    Raises:
        ValueError: nothing left, or characters other than letters, digits and ``_``.

    Example:
        >>> canonical_name(" Spinal cord")
        'spinal_cord'
    """
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if not key or not key.replace("_", "").isalnum():
        raise ValueError(f"a label name needs letters or digits (and spaces, '-' or '_'), got {name!r}")
    return key


def _colour(label_id: int) -> tuple[int, int, int]:
    """A distinct colour per id: hues a golden angle apart."""
    r, g, b = colorsys.hsv_to_rgb((label_id * 0.618033988749895) % 1.0, 0.7, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def add_label(
    model: UniMed,
    name: str,
    tasks: Iterable[Task | str],
    *,
    display: str | None = None,
    color: Sequence[int] | None = None,
    category: Code = TISSUE,
    type: Code | None = None,
    prototype: torch.Tensor | None = None,
) -> Label:
    """Grow ``model``'s label space by one label, in place; the old labels' outputs stay bit-identical.

    Args:
        model: the network.
        name: the new label's name (made snake_case).
        tasks: the tasks it can be asked for (a mask teaches segmentation and detection).
        display: its name in viewers (default: the name with spaces, capitalised).
        color: RGB for viewers and DICOM SEG (default: a hue of its own).
        category: DICOM SEG segmented property category (default: tissue).
        type: DICOM SEG property type (default: a private ``99UNIMED`` code of the name).
        prototype: ``(dim,)`` the new token's embedding row; default: the mean of the old
            label tokens' rows (refine it with :func:`fit_label_token`).

    Returns:
        The new :class:`Label`.

    Raises:
        ValueError: the name (or an alias) exists, no tasks, a colour that is not RGB, the
            label ids are used up, or a prototype of the wrong shape.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> net = unimed_tiny()
        >>> lab = add_label(net, "Spinal cord", ["segmentation", "detection"])
        >>> lab.name, lab.id, net.registry.class_index(lab), net.config.labels[-1]
        ('spinal_cord', 12, 12, 'spinal_cord')
    """
    key = canonical_name(name)
    if key in model.registry:
        raise ValueError(f"label {key!r} already exists (label {model.registry.get(key).name!r}, "
                         f"id {model.registry.get(key).id}); choose another name")
    task_set = frozenset(Task.parse(t) for t in tasks)
    if not task_set:
        raise ValueError(f"label {key!r} needs at least one task")
    label_id = model.registry.next_id()
    rgb = tuple(int(c) for c in (color if color is not None else _colour(label_id)))
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"color must be three values in 0..255, got {color!r}")
    label = Label(label_id, key, display or key.replace("_", " ").capitalize(), task_set, rgb, (), category,
                  type or Code(key.upper()[:16], "99UNIMED", display or key.replace("_", " ").capitalize()))
    registry = LabelRegistry([*model.registry, label])
    old_vocab = model.vocab
    vocab = TokenVocabulary(registry, num_bins=old_vocab.num_bins, num_mask_refs=old_vocab.num_mask_refs + 1)
    dim = model.config.dim
    if prototype is not None and tuple(prototype.shape) != (dim,):
        raise ValueError(f"prototype must have shape ({dim},), got {tuple(prototype.shape)}")

    with torch.no_grad():
        decoder = model.decoder
        old = decoder.token_embed.weight
        label_rows = old[old_vocab.label_offset: old_vocab.coord_offset]
        weight = old.new_zeros(vocab.size, dim)
        rows = torch.tensor([vocab.id_of(old_vocab.token_str(i)) for i in range(old_vocab.size)], device=old.device)
        weight[rows] = old
        new_token = vocab.label_token(label)
        weight[new_token] = label_rows.mean(0) if prototype is None else prototype.to(old)
        new_mask = vocab.mask_token(vocab.num_mask_refs - 1)
        weight[new_mask] = old[old_vocab.mask_token(old_vocab.num_mask_refs - 1)]
        embed = nn.Embedding(vocab.size, dim).to(old)
        embed.weight.copy_(weight)
        decoder.token_embed = embed

        head = decoder.class_head
        grown = nn.Linear(head.in_features, head.out_features + 1).to(head.weight)
        grown.weight[:-1], grown.bias[:-1] = head.weight, head.bias
        grown.weight[-1], grown.bias[-1] = head.weight[1:].mean(0), head.bias[1:].mean()
        decoder.class_head = grown

        heat = model.proposal_head.heat
        grown_heat = Conv(heat.in_channels, heat.out_channels + 1, kernel_size=heat.kernel_size[0]).to(heat.weight)
        grown_heat.weight[:-1], grown_heat.bias[:-1] = heat.weight, heat.bias
        grown_heat.weight[-1] = heat.weight.mean(0)
        grown_heat.bias[-1] = _HEAT_PRIOR_BIAS
        model.proposal_head.heat = grown_heat

    model.registry, model.vocab = registry, vocab
    model.config = replace(model.config, labels=tuple(registry.names),
                           label_definitions=tuple(label_to_dict(lab) for lab in registry))
    return label


def pool_prototype(pixel: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean per-pixel embedding under masks: a structure's prototype in the pixel space.

    Args:
        pixel: ``(B, D, x, y, z)`` per-pixel embeddings (:attr:`Features.pixel`).
        masks: ``(B, X, Y, Z)`` the structure (nonzero) on the model grid; resized to the
            pixel grid by area (a voxel counts by the share of it the structure covers).

    Returns:
        ``(D,)`` the weighted mean.

    Raises:
        ValueError: the masks are empty or their batch differs from ``pixel``'s.

    Example:
        >>> pix = torch.zeros(1, 2, 4, 4, 1); pix[0, 0, :2] = 1.0
        >>> m = torch.zeros(1, 8, 8, 1); m[0, :4] = 1
        >>> pool_prototype(pix, m).tolist()
        [1.0, 0.0]
    """
    weights = _on_pixel_grid(pixel, masks)
    total = weights.sum()
    if float(total) <= 0:
        raise ValueError("the masks are empty: a prototype needs at least one voxel of the structure")
    return torch.einsum("bdxyz,bxyz->d", pixel, weights) / total


def _on_pixel_grid(pixel: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if masks.shape[0] != pixel.shape[0] or masks.ndim != 4:
        raise ValueError(f"masks must be (B, X, Y, Z) for {pixel.shape[0]} images, got {tuple(masks.shape)}")
    m = (masks != 0).to(pixel.dtype)[:, None]
    return F.adaptive_avg_pool3d(m, tuple(pixel.shape[2:]))[:, 0] if m.shape[2:] != pixel.shape[2:] else m[:, 0]


def fit_label_token(
    model: UniMed,
    label: Label | str,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    modalities: torch.Tensor | None = None,
    steps: int = 30,
    lr: float = 0.05,
) -> list[float]:
    """Initialise ``label``'s token row from annotated examples; nothing else changes.

    1. The per-pixel embeddings pooled inside and outside the structure (:func:`pool_prototype`)
       give its contrast ``p_in - p_out``. A token's mean mask logit inside minus outside is
       its mask embedding's product with that contrast, so the existing label token that
       separates the structure best is the start.
    2. ``steps`` Adam steps on that row alone (the network frozen, features computed once)
       minimise the balanced per-pixel binary cross-entropy of the token's mask logits.

    Args:
        model: the network whose label space holds ``label`` (:func:`add_label`).
        label: the label (or its name).
        images: ``(B, C, X, Y, Z)`` model-grid images.
        masks: ``(B, X, Y, Z)`` the structure (nonzero) on the same grid.
        modalities: ``(B, C)`` modality indices, or None (unknown).
        steps: optimisation steps (0: the start only).
        lr: Adam's step size.

    Returns:
        The loss before each step and after the last (``steps + 1`` values).

    Raises:
        ValueError: empty masks, or masks of another batch than the images.
    """
    label = model.registry.get(label.name if isinstance(label, Label) else label)
    row = model.vocab.label_token(label)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = model.encode(images, modalities)
    target = _on_pixel_grid(feats.pixel, masks)
    if float(target.sum()) <= 0:
        raise ValueError("the masks are empty: a token needs at least one voxel of the structure to start from")
    inside, outside = target / target.sum(), (1 - target) / (1 - target).sum().clamp(min=1e-6)
    weight = model.decoder.token_embed.weight
    saved = weight.detach().clone()
    # the segmentation prompt [task, label], built directly: a detection-only label fits too
    ids = torch.tensor([[model.vocab.task_token(Task.SEGMENTATION), row]] * images.shape[0], device=images.device)

    def mask_logits() -> torch.Tensor:
        return model.decode(feats, ids)["mask_logits"][:, 1]

    # 1. the start: mean logit inside minus outside is the mask embedding's product with the
    # prototype contrast p_in - p_out; take the existing label token that maximises it
    with torch.no_grad():
        best, best_score = None, float("-inf")
        for lab in model.registry:
            if lab.name == label.name:
                continue
            weight[row] = saved[model.vocab.label_token(lab)]
            logits = mask_logits()
            score = float((logits * inside).sum() - (logits * outside).sum())
            if score > best_score:
                best, best_score = lab, score
        weight[row] = saved[row] if best is None else saved[model.vocab.label_token(best)]
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    token = weight.detach()[row].clone().requires_grad_(True)
    opt = torch.optim.Adam([token], lr=lr)
    pos = target.sum().clamp(min=1.0)
    pos_weight = ((target.numel() - pos) / pos).clamp(max=100.0)
    losses = []
    try:
        for step in range(steps + 1):
            with torch.no_grad():
                weight[row] = token.detach()
            weight.requires_grad_(True)
            logits = mask_logits()
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            losses.append(float(loss.detach()))
            if step == steps:
                break
            (grad,) = torch.autograd.grad(loss, weight)
            weight.requires_grad_(False)
            token.grad = grad[row]
            opt.step()
    finally:
        with torch.no_grad():
            final = token.detach().clone()
            weight.copy_(saved)
            weight[row] = final
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return losses

