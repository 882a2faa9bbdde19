"""Tests of the token vocabulary and codec of the composed decoder (unimed.tokens)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.tasks import Task
from unimed.tokens import (
    EOS_ID,
    PAD_ID,
    ClassificationAnnotation,
    DetectionAnnotation,
    SegmentationAnnotation,
    TokenCodec,
    TokenDecodeError,
    TokenSequence,
    TokenVocabulary,
)

REGISTRY = LabelRegistry()
SEG_IDS = [lab.id for lab in REGISTRY.for_task(Task.SEGMENTATION)]
DET_NAMES = [lab.name for lab in REGISTRY.for_task(Task.DETECTION)]
CLS_NAMES = [lab.name for lab in REGISTRY.for_task(Task.CLASSIFICATION)]
FAST = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def vocab() -> TokenVocabulary:
    return TokenVocabulary(REGISTRY, num_bins=16, num_mask_refs=8)


@pytest.fixture(scope="module")
def codec(vocab) -> TokenCodec:
    return TokenCodec(vocab)


def toks(vocab: TokenVocabulary, text: str) -> list[int]:
    """Ids of a whitespace-separated list of readable tokens."""
    return [vocab.id_of(t) for t in text.split()]


# -- vocabulary ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_bins,num_mask_refs", [(2, 1), (16, 4), (64, 32)])
def test_ids_are_unique_contiguous_and_invertible(num_bins, num_mask_refs):
    vocab = TokenVocabulary(REGISTRY, num_bins=num_bins, num_mask_refs=num_mask_refs)
    assert vocab.size == 2 + len(Task) + len(REGISTRY) + num_bins + num_mask_refs
    strings = [vocab.token_str(i) for i in range(vocab.size)]
    assert len(set(strings)) == vocab.size
    assert [vocab.id_of(s) for s in strings] == list(range(vocab.size))


def test_layout_and_kinds(vocab):
    assert (vocab.token_str(PAD_ID), vocab.token_str(EOS_ID)) == ("<pad>", "<eos>")
    assert vocab.kind(PAD_ID) == "pad" and vocab.kind(EOS_ID) == "eos"
    kinds = [vocab.kind(i) for i in range(vocab.size)]
    assert kinds.count("task") == 3
    assert kinds.count("label") == len(REGISTRY)
    assert kinds.count("coord") == vocab.num_bins
    assert kinds.count("mask") == vocab.num_mask_refs
    # each range is contiguous and starts at its offset
    assert kinds.index("task") == vocab.task_offset
    assert kinds.index("label") == vocab.label_offset
    assert kinds.index("coord") == vocab.coord_offset
    assert kinds.index("mask") == vocab.mask_offset
    assert kinds == sorted(kinds, key=["pad", "eos", "task", "label", "coord", "mask"].index)


def test_task_tokens(vocab):
    assert [vocab.token_str(vocab.task_token(t)) for t in Task] == ["<seg>", "<det>", "<cls>"]
    for task in Task:
        assert vocab.task_of(vocab.task_token(task)) is task
    assert vocab.task_token("det") == vocab.task_token(Task.DETECTION)


def test_label_tokens_follow_registry_order_and_class_index(vocab):
    for lab in REGISTRY:
        tid = vocab.label_token(lab)
        assert tid == vocab.label_offset + REGISTRY.class_index(lab) - 1
        assert vocab.token_str(tid) == f"<label:{lab.name}>"
        assert vocab.label_of(tid) == lab
    assert vocab.label_token("Oedema") == vocab.label_token("edema")
    with pytest.raises(UnknownLabelError):
        vocab.label_token("spleen")


def test_coord_and_mask_tokens(vocab):
    for k in range(vocab.num_bins):
        assert vocab.bin_of(vocab.coord_token(k)) == k
        assert vocab.token_str(vocab.coord_token(k)) == f"<bin:{k}>"
    for q in range(vocab.num_mask_refs):
        assert vocab.mask_index_of(vocab.mask_token(q)) == q
        assert vocab.token_str(vocab.mask_token(q)) == f"<mask:{q}>"
    with pytest.raises(ValueError, match="outside"):
        vocab.coord_token(vocab.num_bins)
    with pytest.raises(ValueError, match="outside"):
        vocab.mask_token(-1)


def test_out_of_range_and_wrong_kind(vocab):
    for bad in (-1, vocab.size):
        with pytest.raises(ValueError, match="outside"):
            vocab.kind(bad)
        with pytest.raises(ValueError):
            vocab.token_str(bad)
    with pytest.raises(ValueError, match="unknown token"):
        vocab.id_of("<bin:9999>")
    with pytest.raises(ValueError, match="not a task token"):
        vocab.task_of(vocab.coord_token(0))
    with pytest.raises(ValueError, match="not a label token"):
        vocab.label_of(EOS_ID)
    with pytest.raises(ValueError, match="not a coord token"):
        vocab.bin_of(vocab.mask_token(0))
    with pytest.raises(ValueError, match="not a mask token"):
        vocab.mask_index_of(vocab.coord_token(0))


@pytest.mark.parametrize("kwargs", [{"num_bins": 1}, {"num_bins": 0}, {"num_mask_refs": 0}])
def test_vocabulary_rejects_small_sizes(kwargs):
    with pytest.raises(ValueError, match="at least"):
        TokenVocabulary(REGISTRY, **kwargs)


@FAST
@given(
    num_bins=st.integers(2, 512),
    x=hnp.arrays(np.float64, st.integers(0, 20), elements=st.floats(0.0, 1.0)),
)
def test_quantize_round_trip_within_one_bin(num_bins, x):
    vocab = TokenVocabulary(REGISTRY, num_bins=num_bins)
    bins = vocab.quantize(x)
    assert bins.shape == x.shape
    assert ((bins >= 0) & (bins < num_bins)).all()
    np.testing.assert_array_equal(bins, np.minimum(np.floor(x * num_bins), num_bins - 1))
    assert (np.abs(vocab.dequantize(bins) - x) <= 1.0 / num_bins).all()


def test_quantize_scalars_and_clipping(vocab):
    n = vocab.num_bins
    assert vocab.quantize(0.0) == 0 and vocab.quantize(1.0) == n - 1
    assert vocab.quantize(-3.0) == 0 and vocab.quantize(7.0) == n - 1
    assert isinstance(vocab.quantize(0.3), int)
    assert vocab.dequantize(0) == pytest.approx(0.5 / n)
    with pytest.raises(ValueError, match="NaN"):
        vocab.quantize(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="bins must be in"):
        vocab.dequantize(np.array([0, n]))


# -- round trips ---------------------------------------------------------------------------

shapes = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
)
label_maps = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.int64]),
    shape=shapes,
    elements=st.sampled_from([0, *SEG_IDS]),
)


@FAST
@given(label_map=label_maps, with_scores=st.booleans())
def test_segmentation_round_trip(codec, label_map, with_scores):
    present = [int(v) for v in np.unique(label_map) if v]
    scores = {REGISTRY.by_id(v).name: v / 10 for v in present} if with_scores else None
    seq = codec.encode(SegmentationAnnotation(label_map, scores=scores))
    assert seq.shape == label_map.shape
    assert len(seq.masks) == len(present)
    assert len(seq.ids) == 2 + 2 * len(present)
    out = codec.decode(seq)
    assert out.label_map.dtype == np.uint8
    np.testing.assert_array_equal(out.label_map, label_map)
    assert out.scores == scores


def test_segmentation_encoding_layout(codec, vocab):
    label_map = np.array([[0, 4, 4], [2, 2, 0]])
    seq = codec.encode(SegmentationAnnotation(label_map))
    assert seq.ids == toks(vocab, "<seg> <label:edema> <mask:0> <label:enhancing_tumor> <mask:1> <eos>")
    np.testing.assert_array_equal(seq.masks[0], label_map == 2)
    np.testing.assert_array_equal(seq.masks[1], label_map == 4)
    assert seq.masks[0].dtype == np.bool_


def test_empty_segmentation_keeps_shape(codec, vocab):
    seq = codec.encode(SegmentationAnnotation(np.zeros((3, 4, 5), dtype=np.uint8)))
    assert seq.ids == toks(vocab, "<seg> <eos>") and seq.masks == []
    out = codec.decode(seq)
    assert out.label_map.shape == (3, 4, 5) and not out.label_map.any()


def test_segmentation_later_masks_overwrite_earlier(codec, vocab):
    first = np.array([[1, 1], [0, 0]], dtype=bool)
    second = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    seq = TokenSequence(
        toks(vocab, "<seg> <label:necrosis> <mask:0> <label:edema> <mask:1> <eos> <pad> <pad>"),
        masks=[first, second],
        scores=[0.25, 0.75],
    )
    out = codec.decode(seq)
    np.testing.assert_array_equal(out.label_map, [[1, 2], [2, 0]])
    assert out.scores == {"necrosis": 0.25, "edema": 0.75}


boxes_2d_or_3d = st.lists(
    st.tuples(
        st.sampled_from(DET_NAMES),
        st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted), min_size=3, max_size=3),
        st.floats(0, 1),
    ),
    max_size=8,
)


@FAST
@given(items=boxes_2d_or_3d, num_bins=st.integers(2, 256), with_scores=st.booleans())
def test_detection_round_trip_within_one_bin(items, num_bins, with_scores):
    codec = TokenCodec(TokenVocabulary(REGISTRY, num_bins=num_bins))
    boxes = np.array([[lo for lo, _ in axes] + [hi for _, hi in axes] for _, axes, _ in items]).reshape(-1, 6)
    labels = [name for name, _, _ in items]
    scores = [s for _, _, s in items] if with_scores else None
    seq = codec.encode(DetectionAnnotation(boxes, labels, scores=scores))
    assert len(seq.ids) == 2 + 7 * len(items)
    out = codec.decode(seq)
    assert out.labels == labels
    assert out.scores == scores
    assert out.boxes.shape == (len(items), 6)
    assert (np.abs(out.boxes - boxes) <= 1.0 / num_bins).all()
    assert (out.boxes[:, :3] <= out.boxes[:, 3:]).all()


def test_detection_encoding_layout(codec, vocab):
    ann = DetectionAnnotation(np.array([[0.0, 0.5, 0.0, 1.0, 0.75, 1.0]]), ["wbc"])
    seq = codec.encode(ann)
    expected = "<det> <label:white_blood_cell> <bin:0> <bin:8> <bin:0> <bin:15> <bin:12> <bin:15> <eos>"
    assert seq.ids == toks(vocab, expected)
    out = codec.decode(TokenSequence(toks(vocab, "<det> <eos>")))
    assert out.boxes.shape == (0, 6) and out.labels == [] and out.scores is None


@FAST
@given(labels=st.permutations(CLS_NAMES).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n])),
       scores=st.none() | st.floats(0, 1))
def test_classification_round_trip_preserves_order(codec, labels, scores):
    score_list = None if scores is None else [scores] * len(labels)
    seq = codec.encode(ClassificationAnnotation(list(labels), scores=score_list))
    assert [codec.vocab.label_of(i).name for i in seq.ids[1:-1]] == list(labels)
    out = codec.decode(seq)
    assert out.labels == list(labels)
    assert out.scores == score_list


def test_encode_accepts_aliases_and_decodes_canonical_names(codec):
    out = codec.decode(codec.encode(ClassificationAnnotation(["Lung Tumour", "tumor"])))
    assert out.labels == ["lung_tumor", "brain_tumor"]


# -- encode validation ---------------------------------------------------------------------


def test_encode_rejects_label_id_not_in_registry(codec):
    with pytest.raises(ValueError, match="value 42 is not a label id"):
        codec.encode(SegmentationAnnotation(np.array([[0, 42]])))


def test_encode_rejects_segmentation_label_of_wrong_task(codec):
    with pytest.raises(ValueError, match="'brain_tumor' is not valid for segmentation"):
        codec.encode(SegmentationAnnotation(np.array([[0, 5]])))


def test_encode_rejects_float_label_map(codec):
    with pytest.raises(ValueError, match="integer"):
        codec.encode(SegmentationAnnotation(np.array([[0.0, 1.0]])))


def test_encode_rejects_more_labels_than_mask_refs():
    codec = TokenCodec(TokenVocabulary(REGISTRY, num_mask_refs=2))
    with pytest.raises(ValueError, match="3 labels but only 2 mask references"):
        codec.encode(SegmentationAnnotation(np.array([1, 2, 3])))


def test_encode_rejects_missing_segmentation_score(codec):
    with pytest.raises(ValueError, match="scores lack.*edema"):
        codec.encode(SegmentationAnnotation(np.array([1, 2]), scores={"necrosis": 0.5}))


@pytest.mark.parametrize(
    "box,match",
    [
        ([0.0, 0.0, 0.0, 1.2, 1.0, 1.0], r"within \[0, 1\]"),
        ([-0.1, 0.0, 0.0, 1.0, 1.0, 1.0], r"within \[0, 1\]"),
        ([0.0, np.nan, 0.0, 1.0, 1.0, 1.0], "finite"),
        ([0.6, 0.0, 0.0, 0.5, 1.0, 1.0], "inverted: x0 > x1"),
        ([0.0, 0.0, 0.9, 1.0, 1.0, 0.1], "inverted: z0 > z1"),
    ],
)
def test_encode_rejects_bad_boxes(codec, box, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(DetectionAnnotation(np.array([box]), ["platelet"]))


def test_encode_rejects_unknown_label_name(codec):
    with pytest.raises(UnknownLabelError, match="unknown label 'spleen'"):
        codec.encode(DetectionAnnotation(np.array([[0, 0, 0, 1, 1, 1]]), ["spleen"]))


@pytest.mark.parametrize(
    "ann,match",
    [
        (DetectionAnnotation(np.array([[0, 0, 0, 1, 1, 1]]), ["necrosis"]), "'necrosis' is not valid for detection"),
        (ClassificationAnnotation(["edema"]), "'edema' is not valid for classification"),
    ],
)
def test_encode_rejects_label_of_wrong_task(codec, ann, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(ann)


def test_encode_rejects_mismatched_lengths_and_repeats(codec):
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        codec.encode(DetectionAnnotation(np.array([[0, 0, 0, 1, 1, 1]]), ["rbc", "wbc"]))
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        codec.encode(DetectionAnnotation(np.array([[0, 0, 1, 1]]), ["rbc"]))
    with pytest.raises(ValueError, match="1 scores for 2 labels"):
        codec.encode(ClassificationAnnotation(["lung_tumor", "brain_tumor"], scores=[0.1]))
    with pytest.raises(ValueError, match="repeated: lung_tumor"):
        codec.encode(ClassificationAnnotation(["lung_tumor", "lung_tumour"]))
    with pytest.raises(TypeError):
        codec.encode("not an annotation")


# -- decode validation ---------------------------------------------------------------------


def decode_error(codec, text_or_ids, **kwargs) -> pytest.ExceptionInfo:
    ids = toks(codec.vocab, text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    with pytest.raises(TokenDecodeError) as info:
        codec.decode(TokenSequence(ids, **kwargs))
    return info


def test_decode_error_is_a_value_error():
    assert issubclass(TokenDecodeError, ValueError)


def test_decode_rejects_empty_sequence(codec):
    with pytest.raises(TokenDecodeError, match="empty token sequence"):
        codec.decode(TokenSequence([]))


@pytest.mark.parametrize("first", ["<label:edema>", "<eos>", "<pad>", "<bin:3>", "<mask:0>"])
def test_decode_rejects_first_token_not_a_task(codec, first):
    with pytest.raises(TokenDecodeError, match=f"position 0: expected a task token.*{first}"):
        codec.decode(TokenSequence(toks(codec.vocab, f"{first} <eos>")))


@pytest.mark.parametrize("text", ["<cls>", "<cls> <label:lung_tumor>", "<det> <label:platelet> " + "<bin:1> " * 6])
def test_decode_rejects_missing_eos(codec, text):
    n = len(text.split())
    with pytest.raises(TokenDecodeError, match=f"missing <eos>.*position {n}"):
        codec.decode(TokenSequence(toks(codec.vocab, text)))


@pytest.mark.parametrize("after", ["<label:lung_tumor>", "<eos>", "<cls>", "<bin:0>"])
def test_decode_rejects_tokens_after_eos(codec, after):
    with pytest.raises(TokenDecodeError, match=f"position 4: only <pad> may follow <eos>, got .*{after}"):
        codec.decode(TokenSequence(toks(codec.vocab, f"<cls> <label:lung_tumor> <eos> <pad> {after}")))


def test_decode_ignores_trailing_pad(codec):
    out = codec.decode(TokenSequence(toks(codec.vocab, "<cls> <label:lung_tumor> <eos> <pad> <pad>")))
    assert out.labels == ["lung_tumor"]


@pytest.mark.parametrize(
    "text,pos",
    [
        ("<det> <bin:1> <bin:1> <bin:1> <bin:2> <bin:2> <bin:2> <eos>", 1),
        ("<cls> <label:lung_tumor> <bin:4> <eos>", 2),
        ("<det> <label:rbc> <bin:1> <bin:1> <bin:1> <bin:2> <bin:2> <bin:2> <bin:3> <eos>", 8),
    ],
)
def test_decode_rejects_coordinate_where_label_expected(codec, text, pos):
    text = text.replace("<label:rbc>", "<label:red_blood_cell>")
    with pytest.raises(TokenDecodeError, match=f"position {pos}: expected a label token or <eos>, got coord token"):
        codec.decode(TokenSequence(toks(codec.vocab, text)))


def test_decode_rejects_pad_before_eos(codec):
    with pytest.raises(TokenDecodeError, match="position 1: expected a label token or <eos>, got pad token"):
        codec.decode(TokenSequence(toks(codec.vocab, "<cls> <pad> <eos>")))


@pytest.mark.parametrize("n", range(6))
def test_decode_rejects_truncated_box(codec, n):
    text = "<det> <label:platelet> " + "<bin:1> " * n + "<eos>"
    with pytest.raises(TokenDecodeError, match=f"truncated box: <label:platelet> at position 1 has {n} of 6"):
        codec.decode(TokenSequence(toks(codec.vocab, text)))


def test_decode_rejects_label_inside_box(codec):
    text = "<det> <label:platelet> <bin:1> <bin:1> <label:platelet> <bin:2> <bin:2> <bin:2> <eos>"
    with pytest.raises(TokenDecodeError, match="position 4: expected a coord token, got label token"):
        codec.decode(TokenSequence(toks(codec.vocab, text)))


@pytest.mark.parametrize("axis,name", [(0, "x"), (1, "y"), (2, "z")])
def test_decode_rejects_inverted_box(codec, axis, name):
    lo, hi = [3, 3, 3], [5, 5, 5]
    lo[axis], hi[axis] = 6, 2
    coords = " ".join(f"<bin:{b}>" for b in lo + hi)
    first = "<label:red_blood_cell> <bin:0> <bin:0> <bin:0> <bin:1> <bin:1> <bin:1>"
    text = f"<det> {first} <label:platelet> {coords} <eos>"
    with pytest.raises(TokenDecodeError, match=rf"position 8: box has {name}0 > {name}1 \(bin 6 > bin 2\)"):
        codec.decode(TokenSequence(toks(codec.vocab, text)))


def test_decode_rejects_mask_ref_without_payload(codec):
    text = "<seg> <label:necrosis> <mask:0> <label:edema> <mask:1> <eos>"
    with pytest.raises(TokenDecodeError, match=r"position 4: <mask:1> has no payload \(1 masks given\)"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=[np.ones((2, 2), bool)]))
    with pytest.raises(TokenDecodeError, match=r"position 2: <mask:0> has no payload \(0 masks given\)"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=None, shape=(2, 2)))


def test_decode_rejects_segment_without_mask_ref(codec):
    with pytest.raises(TokenDecodeError, match="truncated segment: <label:necrosis> at position 1 has no mask"):
        codec.decode(TokenSequence(toks(codec.vocab, "<seg> <label:necrosis> <eos>"), shape=(2, 2)))
    with pytest.raises(TokenDecodeError, match="position 2: expected a mask token, got label token"):
        ids = toks(codec.vocab, "<seg> <label:necrosis> <label:edema> <mask:0> <eos>")
        codec.decode(TokenSequence(ids, shape=(2, 2)))


@pytest.mark.parametrize("bad", [-1, 10_000, "vocab.size"])
def test_decode_rejects_unknown_ids(codec, bad):
    bad = codec.vocab.size if bad == "vocab.size" else bad
    ids = toks(codec.vocab, "<cls> <label:lung_tumor>") + [bad, EOS_ID]
    with pytest.raises(TokenDecodeError, match=f"position 2: unknown token id {bad}"):
        codec.decode(TokenSequence(ids))


def test_decode_rejects_non_integer_ids(codec):
    with pytest.raises(TokenDecodeError, match="position 1: token id 5.5 is not an integer"):
        codec.decode(TokenSequence([codec.vocab.task_token(Task.CLASSIFICATION), 5.5, EOS_ID]))


def test_decode_accepts_numpy_ids(codec):
    ids = np.array(toks(codec.vocab, "<cls> <label:adrenal_normal> <eos>"), dtype=np.int64)
    assert codec.decode(TokenSequence(list(ids))).labels == ["adrenal_normal"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("<seg> <label:brain_tumor> <mask:0> <eos>", "position 1: label 'brain_tumor' is not valid for segmentation"),
        ("<det> <label:necrosis> " + "<bin:0> " * 6 + "<eos>", "position 1: label 'necrosis' is not valid for det"),
        ("<cls> <label:lung_tumor> <label:platelet> <eos>", "position 2: label 'platelet' is not valid for class"),
    ],
)
def test_decode_rejects_label_not_valid_for_task(codec, text, match):
    with pytest.raises(TokenDecodeError, match=match):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=[np.ones((2, 2), bool)]))


@pytest.mark.parametrize(
    "text,pos,name",
    [
        ("<cls> <label:lung_tumor> <label:lung_tumor> <eos>", 2, "lung_tumor"),
        ("<seg> <label:edema> <mask:0> <label:edema> <mask:1> <eos>", 3, "edema"),
    ],
)
def test_decode_rejects_repeated_label(codec, text, pos, name):
    masks = [np.ones((2, 2), bool), np.zeros((2, 2), bool)]
    with pytest.raises(TokenDecodeError, match=f"position {pos}: label '{name}' is repeated"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=masks))


def test_decode_allows_repeated_detection_labels(codec):
    text = "<det> " + "<label:platelet> <bin:0> <bin:0> <bin:0> <bin:1> <bin:1> <bin:1> " * 2 + "<eos>"
    assert codec.decode(TokenSequence(toks(codec.vocab, text))).labels == ["platelet", "platelet"]


def test_decode_rejects_mask_payload_shapes_that_differ(codec):
    text = "<seg> <label:necrosis> <mask:0> <label:edema> <mask:1> <eos>"
    masks = [np.zeros((4, 4), bool), np.zeros((4, 5), bool)]
    with pytest.raises(TokenDecodeError, match=r"mask payload shapes differ: mask 0 is \(4, 4\), mask 1 is \(4, 5\)"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=masks))


def test_decode_rejects_shape_that_differs_from_masks(codec):
    text = "<seg> <label:necrosis> <mask:0> <eos>"
    with pytest.raises(TokenDecodeError, match=r"sequence shape \(3, 3\) differs from the mask payload shape \(4, 4\)"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=[np.zeros((4, 4), bool)], shape=(3, 3)))


def test_decode_rejects_non_binary_mask(codec):
    text = "<seg> <label:necrosis> <mask:0> <eos>"
    with pytest.raises(TokenDecodeError, match="mask payload 0 is not binary"):
        codec.decode(TokenSequence(toks(codec.vocab, text), masks=[np.full((2, 2), 0.7)]))


def test_decode_rejects_empty_segmentation_without_shape(codec):
    with pytest.raises(TokenDecodeError, match="without a shape"):
        codec.decode(TokenSequence(toks(codec.vocab, "<seg> <eos>"), masks=[]))
    with pytest.raises(TokenDecodeError, match="without a shape"):
        codec.decode(TokenSequence(toks(codec.vocab, "<seg> <eos>")))


def test_decode_rejects_wrong_number_of_scores(codec):
    with pytest.raises(TokenDecodeError, match=r"got 1 scores for 2 objects"):
        ids = toks(codec.vocab, "<cls> <label:lung_tumor> <label:brain_tumor> <eos>")
        codec.decode(TokenSequence(ids, scores=[0.5]))
