"""One case per structure of a multi-label map: a datastore-style folder that ``clicks-eval``
and ``teach`` read.

A label map with many structures (TotalSegmentator's output for ``totalseg_examples``) holds
dozens of structures that no training set of UniMed labels. This writes, for each label value
with at least ``min_voxels`` voxels, a copy of the image named ``<stem>_label<k>`` and its
binary mask under ``labels/final/``, so that every such structure is measured by the same
command, with no choice of which ones:

```bash
python -m benchmarks.structure_cases --image ../shared/data/totalseg_examples/example_mr_sm.nii.gz \\
    --labels ../shared/data/totalseg_examples/example_seg_mr.nii.gz --out runs/mr_structures
python main.py clicks-eval --dataset datastore --data runs/mr_structures --clicks 5
```
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from unimed.datasets.datastore import image_stem

__all__ = ["NIFTI_SUFFIXES", "nifti_stem", "write_structure_cases", "main"]

#: NIfTI suffixes a stem is cut from
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_stem(path: Path) -> tuple[str, str]:
    """The datastore's name for ``path`` (:func:`~unimed.datasets.datastore.image_stem`) and its suffix.

    Raises:
        ValueError: not a NIfTI file.
    """
    stem = image_stem(path.name)
    suffix = path.name[len(stem):]
    if suffix not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: expected a NIfTI file ({' or '.join(NIFTI_SUFFIXES)})")
    return stem, suffix


def write_structure_cases(
    image: str | Path,
    label_map: str | Path,
    out: str | Path,
    *,
    min_voxels: int = 200,
    labels: Sequence[int] | None = None,
) -> list[dict]:
    """Write one datastore case per structure of ``label_map``.

    Args:
        image: the NIfTI image.
        label_map: a NIfTI label map of the image's shape (0 is background).
        out: the folder to write; created if missing. Files of the same names are replaced.
        min_voxels: a structure with fewer voxels is left out (a few voxels is no object to click).
        labels: only these label values (default: every value with ``min_voxels``).

    Returns:
        ``[{"name", "label", "voxels"}]`` of the written cases, largest first.

    Raises:
        ValueError: not NIfTI files, a label map of another shape than the image, ``min_voxels < 1``,
            or no structure left to write.

    Example:
        >>> write_structure_cases("ct.nii.gz", "seg.nii.gz", "runs/ct_structures")  # doctest: +SKIP
        [{'name': 'ct_label5', 'label': 5, 'voxels': 38634}, ...]
    """
    if min_voxels < 1:
        raise ValueError(f"min_voxels must be >= 1, got {min_voxels}")
    image, label_map, out = Path(image), Path(label_map), Path(out)
    stem, suffix = nifti_stem(image)
    nifti_stem(label_map)
    shape = nib.load(str(image)).shape[:3]
    seg = nib.load(str(label_map))
    values = np.asarray(seg.dataobj)
    if values.shape[:3] != shape:
        raise ValueError(f"{label_map}: shape {values.shape} differs from the image's {shape}")
    values = np.rint(values).astype(np.int64)
    found, counts = np.unique(values[values > 0], return_counts=True)
    chosen = [(int(v), int(c)) for v, c in zip(found, counts) if c >= min_voxels and (labels is None or v in labels)]
    if not chosen:
        raise ValueError(f"{label_map}: no structure with at least {min_voxels} voxels"
                         + (f" among labels {list(labels)}" if labels is not None else ""))
    final = out / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    cases = []
    for value, voxels in sorted(chosen, key=lambda vc: (-vc[1], vc[0])):
        name = f"{stem}_label{value}"
        shutil.copyfile(image, out / f"{name}{suffix}")
        mask = nib.Nifti1Image((values == value).astype(np.uint8), seg.affine, seg.header)
        mask.set_data_dtype(np.uint8)
        nib.save(mask, str(final / f"{name}{suffix}"))
        cases.append({"name": name, "label": value, "voxels": voxels})
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.structure_cases --image X --labels Y --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.structure_cases", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="a NIfTI image")
    p.add_argument("--labels", required=True, help="its NIfTI label map (0 is background)")
    p.add_argument("--out", required=True, help="the datastore-style folder to write")
    p.add_argument("--min-voxels", type=int, default=200, help="leave out smaller structures (default 200)")
    p.add_argument("--only", type=lambda s: [int(v) for v in s.split(",")], default=None, metavar="K,K,...",
                   help="only these label values")
    args = p.parse_args(argv)
    try:
        cases = write_structure_cases(args.image, args.labels, args.out, min_voxels=args.min_voxels, labels=args.only)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for case in cases:
        print(f"{case['name']}  label {case['label']}  {case['voxels']} voxels")
    print(f"{len(cases)} cases written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
