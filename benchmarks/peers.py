"""Single-task peers of UniMed, trained on the same data for the same wall-clock budget and
scored by the same code as ``main.py evaluate`` (:func:`unimed.evaluation.evaluate`).

| dataset | peer | from |
|---|---|---|
| ``brats`` | SegResNet, MONAI Label radiology ``segmentation`` settings | :mod:`.stock` |
| ``medmnist`` | 3D ResNet-18 | ``monai.networks.nets.resnet18`` |
| ``voc`` (BCCD) | RetinaNet (ResNet-18 + FPN) | ``monai.apps.detection`` |
| ``msd_patches`` | 2D residual UNet | ``monai.networks.nets.UNet`` |

RetinaNet without torchvision (torchvision has no build for this torch): MONAI's network,
anchors, ATSS matcher, hard-negative sampler, box coder and selector need none, but two pieces
reach for it. MONAI's ready-made feature extractor (``resnet_fpn_feature_extractor`` and
``BackboneWithFPN``) takes its layer getter from torchvision: :class:`ResNetFPN` is that
extractor in plain torch (the same ResNet layers into MONAI's ``FeaturePyramidNetwork``). And
``RetinaNetDetector.compute_anchor_matched_idxs`` first asks whether the matcher is torchvision's
``Matcher``, which fails without torchvision even when the ATSS matcher is set: the
detector's docstring says to override that method for another matcher, which
:func:`_atss_detector` does (ATSS only). Everything else is MONAI's RetinaNet as shipped.

Each peer answers ``predict(image, task, labels)`` like :class:`unimed.predictor.Predictor`, so
``evaluate`` scores both with one code path.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainers.distillation import TeacherScores, write_teacher_scores
from unimed.datasets import Sample, dataset_spec, read_dataset
from unimed.labels import LabelRegistry

__all__ = ["PEERS", "AccuracyConfig", "Peer", "PeerPrediction", "ResNetFPN", "check_held_out", "default_peer_minutes",
           "run_accuracy"]

logger = logging.getLogger(__name__)


@dataclass
class AccuracyConfig:
    """Settings of :func:`run_accuracy`.

    Attributes:
        data: a folder laid out like ``../shared/data``.
        checkpoint: UniMed's checkpoint; its ``model_card.json`` gives the default budget.
        peer_minutes: training budget per peer; None: :func:`default_peer_minutes`.
        max_steps: stop a peer after this many steps even within budget (tests).
        small: much smaller peer networks (tests only; never for reported figures).
        threads: torch threads (None: torch's default).
        seed: seeds Python, NumPy and torch.
        teachers: a folder where a peer that answers a classification writes its scores on the
            training split as a teacher file (:mod:`trainers.distillation`) for ``pretrain
            --teachers``; None: none written.
    """

    data: Path
    checkpoint: Path
    peer_minutes: float | None = None
    max_steps: int | None = None
    small: bool = False
    threads: int | None = None
    seed: int = 0
    teachers: Path | None = None

    def __post_init__(self) -> None:
        if self.peer_minutes is not None and self.peer_minutes <= 0:
            raise ValueError(f"peer_minutes must be positive, got {self.peer_minutes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


def _model_card(checkpoint: Path) -> tuple[Path, dict[str, Any] | None]:
    """The path of the ``model_card.json`` beside ``checkpoint``, and its content (None: no card)."""
    card_path = Path(checkpoint).parent / "model_card.json"
    return card_path, json.loads(card_path.read_text()) if card_path.exists() else None


def check_held_out(checkpoint: Path, dataset: str, split: str | None, cases: Sequence[str] | None = None) -> None:
    """Refuse to compare on cases UniMed trained on: the ``model_card.json`` beside
    ``checkpoint`` names each dataset's training split (``pretrain --all-splits``: ``train+val``;
    a ``--hold-out`` run: ``train+val without CASES``). A checkpoint without a card, or a card
    without the dataset, passes; so does a hold-out run whose held-out cases include every one
    of ``cases`` (the split's case names; None: a hold-out run is not checked further).

    Raises:
        ValueError: the card says the checkpoint trained on ``split`` of ``dataset``, or on some
            of its ``cases``.
    """
    card_path, card = _model_card(checkpoint)
    if split is None or card is None:
        return
    trained = str(card.get("data", {}).get(dataset, {}).get("split", ""))
    splits, _, without = trained.partition(" without ")
    if split not in splits.replace(" ", "").split("+"):
        return
    held_out = {c.strip() for c in without.split(",") if c.strip()}
    if held_out and (cases is None or set(cases) <= held_out):
        return
    raise ValueError(f"{checkpoint} trained on the {split} split of {dataset} ({card_path}: {trained!r}), which the "
                     f"comparison scores: pass --checkpoint of a run that kept it out (a pretrain --hold-out run's)")


def default_peer_minutes(checkpoint: Path) -> float:
    """UniMed's training minutes divided by the number of labelled datasets it trained on, from
    the ``model_card.json`` beside ``checkpoint``.

    Raises:
        ValueError: there is no model card, or it lacks ``train_minutes`` or ``data``.
    """
    card_path, card = _model_card(checkpoint)
    if card is None:
        raise ValueError(f"no model card at {card_path}: pass --peer-minutes")
    if not card.get("train_minutes") or not card.get("data"):
        raise ValueError(f"{card_path} lacks train_minutes or data: pass --peer-minutes")
    return float(card["train_minutes"]) / len(card["data"])


# -- answers shaped like unimed.predictor.Prediction -----------------------------------------------
@dataclass
class PeerAnnotation:
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


@dataclass
class PeerPrediction:
    """A peer's answer with the parts of :class:`unimed.predictor.Prediction` that
    :func:`unimed.evaluation.evaluate` reads."""

    annotation: PeerAnnotation
    label_map_array: np.ndarray | None = None
    boxes: np.ndarray | None = None

    def label_map(self) -> np.ndarray:
        if self.label_map_array is None:
            raise ValueError("this prediction has no label map")
        return self.label_map_array

    def boxes_voxel(self) -> np.ndarray:
        return np.zeros((0, 6)) if self.boxes is None else self.boxes


# -- peers -----------------------------------------------------------------------------------------
class Peer:
    """A single-task network with a training step and a ``predict`` like UniMed's predictor.

    Subclasses set ``name`` and ``task`` and implement :meth:`train_step` and :meth:`predict`.
    """

    name = "peer"
    task = "segmentation"
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def settings(self) -> dict[str, Any]:
        return {"parameters": sum(p.numel() for p in self.network.parameters())}

    def train_step(self, rng: random.Random) -> int:
        """One optimiser step (the network in training mode); returns the samples it used."""
        raise NotImplementedError

    def teacher_scores(self, samples: Sequence[Sample], dataset: str, split: str) -> TeacherScores:
        """The peer's class probabilities on ``samples`` (its own training split), as a teacher
        file's content (:mod:`trainers.distillation`); for a peer that answers a classification."""
        scores = {}
        for s in samples:
            answer = self.predict(s.image, self.task).annotation
            scores[s.name] = {label: float(p) for label, p in zip(answer.labels, answer.scores)}
        return TeacherScores(dataset, self.name, split, scores)

    def predict(self, image: torch.Tensor, task: str, labels: Sequence[str] | None = None, **kwargs: Any) -> PeerPrediction:
        raise NotImplementedError

    def _update(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (``self.optimizer`` over the network's parameters)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def fit(self, seconds: float, max_steps: int | None = None, progress: bool = False) -> dict[str, Any]:
        """Train until ``seconds`` of wall clock (at least one step) or ``max_steps``."""
        rng = random.Random(0)
        start, steps, samples = time.perf_counter(), 0, 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=round(seconds), desc=f"train {self.name}", unit="s")
        while True:
            samples += self.train_step(rng)
            steps += 1
            elapsed = time.perf_counter() - start
            if bar is not None:
                bar.n = min(round(elapsed), bar.total)
                bar.set_postfix_str(f"step {steps}")
                bar.refresh()
            if elapsed >= seconds or (max_steps is not None and steps >= max_steps):
                break
        if bar is not None:
            bar.close()
        self.network.eval()
        return {"steps": steps, "samples": samples, "train_seconds": round(time.perf_counter() - start, 1)}


def _scaled(image: torch.Tensor) -> torch.Tensor:
    """Min-max scale an image to [0, 1] (a constant image becomes zeros)."""
    x = torch.as_tensor(image, dtype=torch.float32)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _flip(rng: random.Random, *tensors: torch.Tensor, dims: Sequence[int]) -> list[torch.Tensor]:
    out = list(tensors)
    for d in dims:
        if rng.random() < 0.5:
            out = [t.flip(d) for t in out]
    return out


class BratsPeer(Peer):
    """MONAI Label's stock SegResNet pipeline, trained as the stock radiology trainer does:
    1.5 mm, random 96^3 crops, Dice + CE, AdamW (lr 1e-4, weight decay 1e-5), batch 1."""

    name = "SegResNet (MONAI Label radiology segmentation)"
    labels = ("necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor")

    def __init__(self, train: list[Sample], *, small: bool = False):
        from monai.data import MetaTensor
        from monai.losses import DiceCELoss
        from monai.transforms import Compose, Orientation, Spacing

        from benchmarks.stock import StockSegmentation, StockSegmentationConfig

        channels = int(train[0].image.shape[0])
        config = StockSegmentationConfig(in_channels=channels, out_channels=len(self.labels) + 1,
                                         **({"roi_size": 32, "init_filters": 8} if small else {}))
        self.pipeline = StockSegmentation(config)
        self.network = self.pipeline.network
        self.roi = config.roi_size
        registry = LabelRegistry()
        self.ids = [registry.get(n).id for n in self.labels]
        lut = np.zeros(256, dtype=np.int64)
        lut[self.ids] = np.arange(1, len(self.ids) + 1)
        label_geometry = Compose([Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                                  Spacing(pixdim=(config.target_spacing,) * 3, mode="nearest")])
        self.items = []
        for s in train:
            image = self.pipeline.preprocess(s.meta_image()).as_tensor()
            lab = MetaTensor(torch.as_tensor(lut[np.asarray(s.label_map)])[None].float(),
                             affine=torch.as_tensor(np.asarray(s.affine)))
            self.items.append((image, label_geometry(lab).as_tensor()[0].long()))
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-4, weight_decay=1e-5)

    def train_step(self, rng: random.Random) -> int:
        self.network.train()
        image, lab = rng.choice(self.items)
        pad = [max(0, self.roi - n) for n in image.shape[1:]]
        if any(pad):
            spec = [v for p in reversed(pad) for v in (0, p)]
            image, lab = F.pad(image, spec, mode="replicate"), F.pad(lab[None], spec)[0]
        lo = [rng.randint(0, n - self.roi) for n in image.shape[1:]]
        sl = tuple(slice(a, a + self.roi) for a in lo)
        x, y = image[(slice(None),) + sl][None], lab[sl][None, None]
        self._update(self.loss(self.network(x), y))
        return 1

    def predict(self, image, task, labels=None, **kwargs):
        self.network.eval()
        classes = self.pipeline.predict(image)
        lut = np.array([0] + self.ids, dtype=np.uint8)
        return PeerPrediction(PeerAnnotation(), label_map_array=lut[classes])


class MedMNISTPeer(Peer):
    """3D ResNet-18 (``monai.networks.nets.resnet18``), cross-entropy, AdamW (lr 1e-3), batch 16, flips."""

    name = "3D ResNet-18"
    task = "classification"
    positive, negative = "adrenal_hyperplasia", "adrenal_normal"

    def __init__(self, train: list[Sample], *, small: bool = False):
        from monai.networks.nets import ResNet, resnet18

        if small:
            self.network = ResNet("basic", [1, 1, 1, 1], [8, 8, 16, 16], spatial_dims=3, n_input_channels=1, num_classes=2)
        else:
            self.network = resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
        self.items = [(_scaled(s.image[:1]), int(s.class_labels[self.positive])) for s in train if s.class_labels]
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=1e-4)
        self.batch_size = 16

    def train_step(self, rng: random.Random) -> int:
        self.network.train()
        batch = [rng.choice(self.items) for _ in range(self.batch_size)]
        x = torch.stack([_flip(rng, img, dims=(1, 2, 3))[0] for img, _ in batch])
        y = torch.tensor([t for _, t in batch])
        self._update(F.cross_entropy(self.network(x), y))
        return len(batch)

    @torch.inference_mode()
    def predict(self, image, task, labels=None, **kwargs):
        self.network.eval()
        p = float(torch.softmax(self.network(_scaled(torch.as_tensor(image)[:1])[None]), dim=1)[0, 1])
        return PeerPrediction(PeerAnnotation([self.positive, self.negative], [p, 1.0 - p]))


class ResNetFPN(torch.nn.Module):
    """A 2D/3D MONAI ResNet's first stages under MONAI's ``FeaturePyramidNetwork``: the feature
    extractor RetinaNet takes, without torchvision.

    Args:
        backbone: a ``monai.networks.nets.ResNet``.
        spatial_dims: 2 or 3.
        returned_layers: which of ``layer1`` .. ``layer4`` feed the pyramid.
        out_channels: the pyramid's channels.
    """

    def __init__(self, backbone: torch.nn.Module, spatial_dims: int, returned_layers: Sequence[int] = (1, 2, 3),
                 out_channels: int = 64):
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
            raise ValueError(f"returned_layers must be a non-empty subset of 1..4, got {returned_layers}")
        self.backbone, self.returned = backbone, [f"layer{i}" for i in returned_layers]
        widths = [getattr(backbone, name)[-1].conv2.out_channels for name in self.returned]
        self.fpn = FeaturePyramidNetwork(spatial_dims=spatial_dims, in_channels_list=widths, out_channels=out_channels,
                                         extra_blocks=LastLevelMaxPool(spatial_dims))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.backbone
        x = b.conv1(x)
        x = b.act(b.bn1(x))
        if not b.no_max_pool:
            x = b.maxpool(x)
        feats = {}
        for i in range(1, 5):
            name = f"layer{i}"
            x = getattr(b, name)(x)
            if name in self.returned:
                feats[name] = x
            if name == self.returned[-1]:
                break
        return self.fpn(feats)


def _atss_detector(*args: Any, **kwargs: Any) -> Any:
    """A ``RetinaNetDetector`` whose anchor matching calls the ATSS matcher directly."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    class ATSSRetinaNetDetector(RetinaNetDetector):
        def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
            matched = []
            for anchors_i, targets_i in zip(anchors, targets):
                boxes = targets_i[self.target_box_key].to(anchors_i.device)
                if boxes.numel() == 0:  # no object: every anchor is background
                    matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
                    continue
                _, idx = self.proposal_matcher(boxes, anchors_i, num_anchor_locs_per_level, self.num_anchors_per_loc)
                matched.append(idx)
            return matched

    return ATSSRetinaNetDetector(*args, **kwargs)


class VOCPeer(Peer):
    """MONAI's RetinaNet (2D, ResNet-18 + FPN, ATSS matcher, hard-negative sampler), images at
    ``scale`` of their size, AdamW (lr 1e-4), batch 2, flips."""

    name = "RetinaNet (monai.apps.detection, ResNet-18 FPN)"
    task = "detection"
    classes = ("red_blood_cell", "white_blood_cell", "platelet")

    def __init__(self, train: list[Sample], *, small: bool = False, scale: float = 0.5):
        from monai.apps.detection.networks.retinanet_network import RetinaNet
        from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
        from monai.networks.nets import resnet

        self.scale = scale
        inplanes = [8, 8, 16, 16] if small else resnet.get_inplanes()
        backbone = resnet.ResNet(block=resnet.ResNetBlock, layers=[1, 1, 1, 1] if small else [2, 2, 2, 2],
                                 block_inplanes=inplanes, n_input_channels=3, conv1_t_stride=2, conv1_t_size=7,
                                 spatial_dims=2)
        extractor = ResNetFPN(backbone, 2, (1, 2, 3), out_channels=16 if small else 64)
        anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4, 8],
                                                 base_anchor_shapes=((12, 12), (16, 24), (24, 16)))
        net = RetinaNet(spatial_dims=2, num_classes=len(self.classes), num_anchors=anchors.num_anchors_per_location()[0],
                        feature_extractor=extractor, size_divisible=[32, 32])
        self.detector = _atss_detector(net, anchors, spatial_dims=2, num_classes=len(self.classes),
                                          size_divisible=[32, 32])
        self.detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
        self.detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
        self.detector.set_target_keys(box_key="box", label_key="label")
        self.detector.set_box_selector_parameters(score_thresh=0.05, topk_candidates_per_level=1000, nms_thresh=0.5,
                                                  detections_per_img=100)
        self.network = self.detector
        self.items = [self._item(s) for s in train if s.boxes is not None and len(s.boxes)]
        self.optimizer = torch.optim.AdamW(self.detector.parameters(), lr=1e-4, weight_decay=1e-4)
        self.batch_size = 2

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        x = _scaled(image)[None]
        size = [max(32, round(n * self.scale)) for n in x.shape[2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]

    def _item(self, s: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self._resize(torch.as_tensor(s.image, dtype=torch.float32))
        size = torch.tensor(image.shape[1:] * 2, dtype=torch.float32)
        boxes = torch.as_tensor(np.asarray(s.boxes, dtype=np.float32))[:, [0, 1, 3, 4]] * size
        labels = torch.tensor([self.classes.index(n) for n in s.box_labels])
        return image, boxes, labels

    def train_step(self, rng: random.Random) -> int:
        self.network.train()
        images, targets = [], []
        for image, boxes, labels in (rng.choice(self.items) for _ in range(self.batch_size)):
            boxes = boxes.clone()
            for axis in (0, 1):
                if rng.random() < 0.5:
                    n = image.shape[1 + axis]
                    image = image.flip(1 + axis)
                    boxes[:, [axis, axis + 2]] = n - boxes[:, [axis + 2, axis]]
            images.append(image)
            targets.append({"box": boxes, "label": labels})
        losses = self.detector(images, targets)
        self._update(losses[self.detector.cls_key] + losses[self.detector.box_reg_key])
        return len(images)

    @torch.inference_mode()
    def predict(self, image, task, labels=None, **kwargs):
        self.network.eval()
        image = torch.as_tensor(image, dtype=torch.float32)
        small = self._resize(image)
        out = self.detector([small])[0]
        factor = torch.tensor([image.shape[1] / small.shape[1], image.shape[2] / small.shape[2]] * 2)
        boxes = out["box"].float() * factor - 0.5  # edges -> voxel-centre coordinates, as Prediction.boxes_voxel
        full = torch.cat([boxes[:, :2], torch.full((len(boxes), 1), -0.5), boxes[:, 2:], torch.full((len(boxes), 1), 0.5)], 1)
        names = [self.classes[int(i)] for i in out["label"]]
        scores = [float(v) for v in out[self.detector.pred_score_key]]
        return PeerPrediction(PeerAnnotation(names, scores), boxes=full[:, [0, 1, 2, 3, 4, 5]].numpy())


class MSDPatchPeer(Peer):
    """2D residual UNet (``monai.networks.nets.UNet``), Dice + CE, AdamW (lr 1e-3), batch 16, flips."""

    name = "2D UNet"

    def __init__(self, train: list[Sample], *, small: bool = False):
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        channels = (8, 16, 32) if small else (16, 32, 64, 128)
        self.network = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=channels,
                            strides=(2,) * (len(channels) - 1), num_res_units=2)
        self.id = LabelRegistry().get("lung_tumor").id
        self.items = [(torch.as_tensor(s.image[:1], dtype=torch.float32).reshape(1, *s.image.shape[1:3]),
                       torch.as_tensor(np.asarray(s.label_map) == self.id).long().reshape(s.image.shape[1:3]))
                      for s in train if s.label_map is not None]
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=1e-4)
        self.batch_size = 16

    def train_step(self, rng: random.Random) -> int:
        self.network.train()
        batch = [_flip(rng, img, lab[None], dims=(1, 2)) for img, lab in (rng.choice(self.items)
                                                                       for _ in range(self.batch_size))]
        x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        self._update(self.loss(self.network(x), y))
        return len(batch)

    @torch.inference_mode()
    def predict(self, image, task, labels=None, **kwargs):
        self.network.eval()
        image = torch.as_tensor(image, dtype=torch.float32)
        shape = tuple(image.shape[1:])
        x = image[:1].reshape(1, 1, *shape[:2])
        pad = [(-n) % 8 for n in shape[:2]]
        x = F.pad(x, [0, pad[1], 0, pad[0]], mode="replicate")
        classes = self.network(x)[0].argmax(0)[: shape[0], : shape[1]].numpy()
        return PeerPrediction(PeerAnnotation(), label_map_array=(classes * self.id).astype(np.uint8).reshape(shape))


#: dataset name -> its peer
PEERS: dict[str, type[Peer]] = {"brats": BratsPeer, "medmnist": MedMNISTPeer, "voc": VOCPeer, "msd_patches": MSDPatchPeer}


def run_accuracy(name: str, config: AccuracyConfig, progress: bool = False) -> dict[str, Any]:
    """Train ``name``'s peer for the budget, then score it and UniMed on the validation split.

    Returns:
        ``{"dataset", "split", "n", "unimed": {"metrics"}, "peer": {"name", "budget_minutes", "steps",
        "samples", "train_seconds", "metrics", "settings"}, "primary": {...}}``.

    Raises:
        ValueError: an unknown dataset, its folder is missing, or UniMed's card says it trained on
            the split the comparison scores (:func:`check_held_out`).
    """
    from trainers.joint import seed_everything
    from unimed.checkpoint import load_checkpoint
    from unimed.evaluation import evaluate
    from unimed.predictor import Predictor

    if name not in PEERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(PEERS)}")
    spec = dataset_spec(name)
    folder = Path(config.data) / spec.folder
    if not folder.exists():
        raise ValueError(f"no {name} data at {folder}")
    if config.threads:
        torch.set_num_threads(config.threads)
    minutes = config.peer_minutes if config.peer_minutes is not None else default_peer_minutes(config.checkpoint)
    seed_everything(config.seed)
    check_held_out(config.checkpoint, name, spec.val_split,
                   [s.name for s in read_dataset(spec.kind, folder, spec.val_split)])
    train = read_dataset(spec.kind, folder, spec.train_split)
    peer = PEERS[name](train, small=config.small)
    logger.info("accuracy %s: training %s for %.1f min", name, peer.name, minutes)
    fit = peer.fit(minutes * 60, config.max_steps, progress=progress)
    peer_result = evaluate(spec.kind, folder, peer, split=spec.val_split, progress=progress)
    teacher_file = None
    if config.teachers is not None and peer.task == "classification":
        teacher_file = str(write_teacher_scores(
            Path(config.teachers) / f"{name}.json", peer.teacher_scores(train, name, spec.train_split),
            budget_minutes=round(minutes, 2), steps=fit["steps"], val_metrics=peer_result["metrics"]))
    model, meta = load_checkpoint(config.checkpoint)
    unimed_result = evaluate(spec.kind, folder, Predictor(model), split=spec.val_split, progress=progress)
    key = spec.primary_metric  # the figure that decides "UniMed >= peer"
    u, p = unimed_result["metrics"].get(key), peer_result["metrics"].get(key)
    return {
        "dataset": name,
        "split": spec.val_split,
        "n": unimed_result["n"],
        "unimed": {"metrics": unimed_result["metrics"], "checkpoint": str(config.checkpoint),
                   "version": meta.get("version")},
        "peer": {"name": peer.name, "budget_minutes": round(minutes, 2), **fit, "metrics": peer_result["metrics"],
                 "settings": {**peer.settings(), "small": config.small}, "teacher_file": teacher_file},
        "primary": {"metric": key, "unimed": u, "peer": p,
                    "unimed_at_least_peer": None if u is None or p is None else u >= p},
    }
