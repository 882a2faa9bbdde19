"""UniMed: one network for segmentation, detection and classification, chosen by a task token.

Our reading of "Universal Medical Image Representation Learning with Compositional Decoders"
(arXiv 2409.19890): a backbone and pixel decoder give per-pixel embeddings and multi-scale
memory; a decomposed decoder runs a queue of prompt tokens (task token, label tokens) and
learned queries over that memory, and every item of the queue yields a pixel output and a
semantic output. :mod:`unimed.composer` turns those outputs into the discrete tokens of the
composed decoder, and :class:`unimed.tokens.TokenCodec` decodes them into annotations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
from torch import nn

from unimed.labels import DEFAULT_LABELS, Label, LabelRegistry, label_to_dict, registry_from_config
from unimed.modalities import MODALITIES, UNKNOWN, parse_modality
from unimed.networks.backbone import Backbone
from unimed.networks.click_prompt import ClickEncoder, ClickRefiner, appearance_map, object_index, point_features
from unimed.networks.decoder import DecomposedDecoder
from unimed.networks.layers import SIZE_DIVISOR, position_encoding
from unimed.networks.pixel_decoder import PixelDecoder
from unimed.networks.presence import PresenceEvidence
from unimed.networks.proposals import ProposalHead, select_proposals
from unimed.task_names import Task
from unimed.vocabulary import TokenVocabulary

__all__ = ["UniMedConfig", "UniMed", "Features", "unimed_small", "unimed_tiny"]

#: spatial strides of the pixel embedding and of the decoder's memory levels
PIXEL_STRIDE = 2
MEMORY_STRIDES = (16, 8)


@dataclass
class UniMedConfig:
    """Every hyper-parameter of the network; saved in each checkpoint.

    Attributes:
        channels: backbone stage channels (strides 2, 4, 8, 16).
        blocks: residual blocks per backbone stage.
        stem_channels: channels of the per-input-channel stem.
        dim: width of the pixel decoder and of the transformer decoder.
        mask_dim: width of the per-pixel embeddings.
        heads: attention heads.
        layers: transformer decoder layers.
        num_queries: learned queries (the most objects one image can yield).
        num_bins: coordinate bins per box coordinate.
        labels: names of the shared label space, in class-index order.
        label_definitions: the labels' definitions (:func:`unimed.labels.label_to_dict`: id,
            display name, tasks, colour, codes) in the same order, so that a checkpoint whose
            label space grew (:mod:`unimed.label_growth`) loads with no code change; empty when
            every label is a :data:`~unimed.labels.DEFAULT_LABELS` entry.
        modalities: the modality vocabulary the stem embeds (:mod:`unimed.modalities`; index 0
            unknown); empty for a stem blind to which channel is which (version 1).
        presence_evidence: presence logits also read attention-pooled pixel embeddings and the
            pooled backbone embedding (:class:`PresenceEvidence`), not only the token's state.
        clicks: the decoder takes clicks and boxes as prompt tokens (:mod:`unimed.clicks`,
            :mod:`unimed.networks.click_prompt`).
        click_appearance: the click refiner also compares each voxel's intensities with the
            clicked ones' (:class:`ClickRefiner`), not only the learnt embeddings.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 2, 2)
    stem_channels: int = 16
    dim: int = 96
    mask_dim: int = 32
    heads: int = 4
    layers: int = 3
    num_queries: int = 48
    num_bins: int = 128
    labels: tuple[str, ...] = field(default_factory=lambda: tuple(LabelRegistry().names))
    label_definitions: tuple[dict, ...] = ()
    modalities: tuple[str, ...] = MODALITIES
    presence_evidence: bool = True
    clicks: bool = True
    click_appearance: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UniMedConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        # a version-1 checkpoint's config predates these fields: it had neither
        known.setdefault("modalities", ())
        known.setdefault("presence_evidence", False)
        known.setdefault("clicks", False)
        known.setdefault("click_appearance", False)  # clicks before version 2.1 read embeddings only
        for k in ("channels", "blocks", "labels", "modalities", "label_definitions"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


@dataclass
class Features:
    """What the backbone and pixel decoder give for one image: reusable by every task.

    Attributes:
        pixel: ``(B, mask_dim, X/2, Y/2, Z/2)`` per-pixel embeddings.
        memory: ``(B, dim, ...)`` pyramid levels at strides 16 and 8.
        dense: ``(B, dim, X/4, Y/4, Z/4)`` the stride-4 level that proposes objects.
        embedding: ``(B, channels[-1])`` global average of the deepest backbone stage.
        appearance: ``(B, C, X/2, Y/2, Z/2)`` the image on the pixel grid, each channel
            standardised (:func:`~unimed.networks.click_prompt.appearance_map`); what click
            refinement compares voxels by. None where no click reads it.
    """

    pixel: torch.Tensor
    memory: list[torch.Tensor]
    dense: torch.Tensor
    embedding: torch.Tensor
    appearance: torch.Tensor | None = None

    def select(self, rows: Sequence[int]) -> "Features":
        """The features of some images of the batch."""
        rows = list(rows)
        return Features(pixel=self.pixel[rows], memory=[m[rows] for m in self.memory], dense=self.dense[rows],
                        embedding=self.embedding[rows],
                        appearance=None if self.appearance is None else self.appearance[rows])


class UniMed(nn.Module):
    """The universal network.

    Args:
        config: hyper-parameters; defaults give the shipped model's size.
        registry: the shared label space; its names must equal ``config.labels``. None: the
            space ``config`` describes (:func:`unimed.labels.registry_from_config`).

    ``forward(image, prompt_ids, prompt_pad)`` contract:
        - ``image``: ``(B, C, X, Y, Z)`` float, any ``C >= 1``; ``X, Y, Z`` multiples of 16,
          ``Z == 1`` for a 2D image.
        - ``prompt_ids``: ``(B, P)`` token ids, each row ``[task token, label tokens..., pad]``
          (see :meth:`prompt`).
        - ``prompt_pad``: ``(B, P)`` bool, True at padding; None means no padding.
        - ``modalities``: ``(B, C)`` long, each channel's modality index (:meth:`modality_ids`);
          None means unknown. Swapping two channels together with their modalities keeps the
          answer; swapping the channels alone changes it.

        Returns a dict of tensors:
        - ``mask_logits`` ``(B, P, X/2, Y/2, Z/2)``: pixel outputs of the prompt tokens; the
          task token's channel is the background, each label token's channel its label.
        - ``query_mask_logits`` ``(B, Q, X/2, Y/2, Z/2)``: pixel outputs of the learned queries.
        - ``class_logits`` ``(B, Q, K + 1)``: semantic outputs of the queries over the label
          space, index 0 "no object", index ``c`` the registry's class index ``c``.
        - ``box_logits`` ``(B, Q, 6, num_bins)`` and ``boxes`` ``(B, Q, 6)``: each query's box
          ``[x0, y0, z0, x1, y1, z1]`` normalised to the image, as coordinate-bin logits and
          as their expected value.
        - ``presence_logits`` ``(B, P)``: image-level presence of each prompt label (the
          task token's entry is unused).
        - ``embedding`` ``(B, channels[-1])``: the image embedding.
        - ``heat_logits`` ``(B, K, X/4, Y/4, Z/4)`` and ``extents`` ``(B, 6, ...)``: the dense
          proposals the queries start from, and ``proposal_boxes`` ``(B, Q, 6)``.

    Example:
        >>> net = unimed_tiny()
        >>> ids, pad = net.prompt([("segmentation", ["edema"])])
        >>> out = net(torch.zeros(1, 2, 32, 32, 16), ids, pad)
        >>> out["mask_logits"].shape, out["class_logits"].shape
        (torch.Size([1, 2, 16, 16, 8]), torch.Size([1, 8, 12]))
    """

    def __init__(self, config: UniMedConfig | None = None, registry: LabelRegistry | None = None):
        super().__init__()
        config = config or UniMedConfig()
        if registry is None:
            registry = registry_from_config(config.labels, config.label_definitions)
        elif tuple(registry.names) != tuple(config.labels):
            raise ValueError(
                f"the label registry {registry.names} differs from the network's label space {list(config.labels)}"
            )
        elif not config.label_definitions and not set(registry).issubset(DEFAULT_LABELS):
            # a registry of its own travels in the config, so a checkpoint of this network loads
            config = replace(config, label_definitions=tuple(label_to_dict(lab) for lab in registry))
        self.config, self.registry = config, registry
        self.vocab = TokenVocabulary(
            self.registry, num_bins=config.num_bins, num_mask_refs=1 + len(self.registry) + config.num_queries
        )
        if config.modalities and config.modalities[0] != UNKNOWN:
            raise ValueError(f"the first modality must be {UNKNOWN!r}, got {config.modalities[0]!r}")
        self.backbone = Backbone(channels=config.channels, blocks=config.blocks, stem_channels=config.stem_channels,
                                 num_modalities=len(config.modalities))
        self.pixel_decoder = PixelDecoder(in_channels=config.channels, dim=config.dim, mask_dim=config.mask_dim)
        self.decoder = DecomposedDecoder(
            vocab_size=self.vocab.size,
            num_queries=config.num_queries,
            num_classes=len(self.registry),
            num_bins=config.num_bins,
            dim=config.dim,
            mask_dim=config.mask_dim,
            heads=config.heads,
            layers=config.layers,
        )
        self.proposal_head = ProposalHead(dim=config.dim, num_classes=len(self.registry))
        self.proposal_proj = nn.Linear(config.dim, config.dim)
        self.presence = (PresenceEvidence(dim=config.dim, mask_dim=config.mask_dim, embed_dim=config.channels[-1])
                         if config.presence_evidence else None)
        self.click_encoder = ClickEncoder(dim=config.dim, mask_dim=config.mask_dim) if config.clicks else None
        self.click_refiner = ClickRefiner(appearance=config.click_appearance) if config.clicks else None
        self.register_buffer("bin_centres", (torch.arange(config.num_bins) + 0.5) / config.num_bins, persistent=False)

    # -- prompts -----------------------------------------------------------------------------
    def prompt(
        self, requests: Sequence[tuple[Task | str, Sequence[Label | str] | None]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and padding mask for a batch of ``(task, labels)`` requests.

        ``labels`` None or empty means every label of the task.

        Raises:
            UnknownTaskError, UnknownLabelError: a request names an unknown task or label.
        """
        rows = []
        for task, labels in requests:
            task = Task.parse(task)
            names = [lab.name if isinstance(lab, Label) else lab for lab in labels] if labels else None
            resolved = self.registry.resolve(names, task)
            rows.append([self.vocab.task_token(task)] + [self.vocab.label_token(lab) for lab in resolved])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.vocab.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids.to(self.bin_centres.device), ids.eq(self.vocab.pad_id).to(self.bin_centres.device)

    def prompt_classes(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` bool: the labels each prompt asks for, as class channels."""
        k = len(self.registry)
        idx = prompt_ids - self.vocab.label_offset
        valid = (idx >= 0) & (idx < k)
        out = torch.zeros(prompt_ids.shape[0], k, dtype=torch.bool, device=prompt_ids.device)
        out.scatter_(1, idx.clamp(0, k - 1), valid)
        return out

    def modality_ids(self, modalities: Sequence[str | None] | None, channels: int) -> torch.Tensor:
        """``(C,)`` embedding indices of a channel list's modalities (None or a None entry: unknown).

        A modality this checkpoint does not know counts as unknown.

        Raises:
            UnknownModalityError: a name that is no modality at all.
            ValueError: the count differs from ``channels``.

        Example:
            >>> unimed_tiny().modality_ids(["flair", "T1ce"], 2).tolist()
            [1, 3]
        """
        if modalities is None:
            return torch.zeros(channels, dtype=torch.long)
        if len(modalities) != channels:
            raise ValueError(f"{len(modalities)} modalities given for an image of {channels} channels")
        known = self.config.modalities
        ids = []
        for name in modalities:
            canonical = UNKNOWN if name is None else parse_modality(name)
            ids.append(known.index(canonical) if canonical in known else 0)
        return torch.tensor(ids, dtype=torch.long)

    # -- the two halves ---------------------------------------------------------------------------
    def encode(self, image: torch.Tensor, modalities: torch.Tensor | None = None) -> Features:
        """Backbone and pixel decoder: the task-independent, expensive half.

        ``modalities`` ``(B, C)``: each channel's modality index (:meth:`modality_ids`); None
        means unknown.
        """
        _check_image(image)
        feats = self.backbone(image, modalities)
        pixel, memory, dense = self.pixel_decoder(feats)
        return Features(pixel=pixel, memory=memory, dense=dense, embedding=feats[-1].mean(dim=(2, 3, 4)),
                        appearance=appearance_map(image, tuple(pixel.shape[2:])))

    def decode(
        self,
        features: Features,
        prompt_ids: torch.Tensor,
        prompt_pad: torch.Tensor | None = None,
        clicks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The decomposed decoder and its heads over cached :class:`Features`.

        ``clicks``: ``(points, kinds)`` of :func:`unimed.clicks.click_tensors`, for a segmentation
        prompt with at most one label. The points join the queue as prompt tokens; then
        ``mask_logits`` is ``(B, 2, X/2, Y/2, Z/2)``: the background and the object, which is the
        label when the prompt names one, else the clicked object (class-agnostic).

        Raises:
            ValueError: clicks for a network built without them, with more than one label, with
                neither a label nor a foreground click or box, or, for a refiner that reads
                appearance, with features that have none.
        """
        if prompt_pad is None:
            prompt_pad = torch.zeros_like(prompt_ids, dtype=torch.bool)
        if prompt_ids.shape[0] != features.pixel.shape[0]:
            raise ValueError(f"{prompt_ids.shape[0]} prompts for a batch of {features.pixel.shape[0]} images")
        memory = [m.flatten(2).transpose(1, 2) for m in features.memory]
        memory_pos = [
            position_encoding(tuple(m.shape[2:]), self.config.dim, device=m.device).to(m.dtype) for m in features.memory
        ]
        heat, extents = self.proposal_head(features.dense)
        props = select_proposals(heat, extents, features.dense, self.prompt_classes(prompt_ids), self.config.num_queries)
        label_ids = (props.classes - 1 + self.vocab.label_offset).clamp(max=self.vocab.size - 1)
        content = self.proposal_proj(props.features) + self.decoder.token_embed(label_ids)
        point_args, points = {}, None
        if clicks is not None:
            point_args, points = self._point_tokens(features, prompt_ids, prompt_pad, clicks)
        out = self.decoder(memory, memory_pos, prompt_ids, prompt_pad, content, props.boxes, **point_args)
        out.update(heat_logits=heat, extents=extents, proposal_boxes=props.boxes)
        p = prompt_ids.shape[1]
        n = p + (0 if points is None else points[1].shape[1])
        masks = torch.einsum("bqd,bdxyz->bqxyz", out.pop("mask_embed"), features.pixel)
        out["mask_logits"], out["query_mask_logits"] = masks[:, :p], masks[:, n:]
        state = out.pop("prompt_state")
        if self.presence is not None:
            out["presence_logits"] = out["presence_logits"] + self.presence(
                state, out["mask_logits"], features.pixel, features.embedding)
        if points is not None:
            pts, kinds, at = points
            idx = object_index(prompt_pad, kinds)
            background = masks[:, 0]
            obj = masks[torch.arange(masks.shape[0], device=masks.device), idx] - background
            refined = self.click_refiner(obj, features.pixel, pts, kinds, at, features.appearance)
            out["mask_logits"] = torch.stack([background, background + refined], 1)
        out["boxes"] = (out["box_logits"].softmax(-1) * self.bin_centres).sum(-1)
        out["embedding"] = features.embedding
        return out

    def _point_tokens(self, features: Features, prompt_ids: torch.Tensor, prompt_pad: torch.Tensor,
                      clicks: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict, tuple]:
        """The decoder's point arguments, and ``(points, kinds, pixel embeddings under them)``."""
        if self.click_encoder is None:
            raise ValueError("this network was built without click prompts (config.clicks is False)")
        points, kinds = clicks
        if points.ndim != 3 or points.shape[-1] != 3 or kinds.shape != points.shape[:2]:
            raise ValueError(f"clicks must be points (B, N, 3) and kinds (B, N), got {tuple(points.shape)} and "
                             f"{tuple(kinds.shape)}")
        if points.shape[0] != prompt_ids.shape[0]:
            raise ValueError(f"clicks for {points.shape[0]} images, prompts for {prompt_ids.shape[0]}")
        if prompt_ids.shape[1] > 2 and bool((~prompt_pad[:, 2:]).any()):
            raise ValueError("clicks refine one object: name at most one label with them")
        n = self.config.num_bins
        bins = (points.float() * n).floor().clamp(0, n - 1).long()
        at = point_features(features.pixel, points)
        coord_embed = self.decoder.token_embed(self.vocab.coord_offset + bins)  # (B, N, 3, dim)
        tokens, pos = self.click_encoder((bins.float() + 0.5) / n, kinds, coord_embed, at)
        return {"point_tokens": tokens, "point_pos": pos, "point_pad": kinds.eq(0)}, (points, kinds, at)

    def forward(
        self,
        image: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_pad: torch.Tensor | None = None,
        modalities: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(image, modalities), prompt_ids, prompt_pad)


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 5:
        raise ValueError(f"image must be (B, C, X, Y, Z), got shape {tuple(image.shape)}")
    if image.shape[1] < 1:
        raise ValueError("image must have at least one channel")
    for n in image.shape[2:]:
        if n != 1 and n % SIZE_DIVISOR:
            raise ValueError(f"spatial sizes must be multiples of {SIZE_DIVISOR} (or 1 for depth), got {tuple(image.shape[2:])}")


def unimed_small(**overrides) -> UniMed:
    """The shipped model's size: about 1.6 M parameters, seconds per BraTS volume on a CPU."""
    return UniMed(UniMedConfig(**overrides))


def unimed_tiny(**overrides) -> UniMed:
    """A very small UniMed for tests and quick experiments."""
    cfg = dict(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), stem_channels=8, dim=24, mask_dim=8, heads=2, layers=2,
               num_queries=8, num_bins=16)
    cfg.update(overrides)
    return UniMed(UniMedConfig(**cfg))
