"""Other contrasts of the same images: a datastore-style folder in which each annotated image
comes again through fixed intensity curves, with its mask unchanged.

What a structure taught on one MR sequence meets on another of the same subject is the same
anatomy in other intensities. Where no second sequence was acquired, these curves stand in for
one: each image's intensities, clipped to the 1-99 percentiles of the body (the voxels above
the 30th percentile) and scaled to [0, 1], go through

- ``gamma``: x squared (mid-tones darker),
- ``sqrt``: the square root (mid-tones brighter),
- ``invert``: 1 - x inside the body, air left dark (bright tissue turns dark and dark tissue
  bright, as fluid does between T1 and T2).

They are a stress test, not a scanner: real sequences also differ in noise, blur and
artefacts. ``teach``'s contrast randomisation (:func:`trainers.data.random_contrast`) draws
random curves of which ``invert``-like ones are a part, so that curve is no unseen kind of change.

```bash
python -m benchmarks.contrast_cases --data MY_CASES/ --out runs/contrasts
python main.py evaluate --checkpoint taught.pt --dataset datastore --data runs/contrasts --label spinal_cord
```
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from benchmarks.structure_cases import NIFTI_SUFFIXES, nifti_stem

__all__ = ["CURVES", "apply_curve", "write_contrast_cases", "main"]

#: the fixed curves, on intensities scaled to [0, 1] (``body`` marks the voxels above the 30th percentile)
CURVES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gamma": lambda x, body: x**2,
    "sqrt": lambda x, body: np.sqrt(x),
    "invert": lambda x, body: np.where(body, 1.0 - x, 0.0),
}


def _check_curve(curve: str) -> None:
    if curve not in CURVES:
        raise ValueError(f"unknown curve {curve!r}; known: {', '.join(CURVES)}")


def _scaled(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The intensities clipped to the body's 1-99 percentiles and scaled to [0, 1], and the body
    (the voxels above the 30th percentile): what every curve reads."""
    x = np.asarray(volume, dtype=np.float32)
    body = x > np.percentile(x, 30)
    lo, hi = np.percentile(x[body], [1, 99]) if body.any() else (float(x.min()), float(x.max()))
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0), body


def _through(curve: str, scaled: np.ndarray, body: np.ndarray) -> np.ndarray:
    return (CURVES[curve](scaled, body) * 1000).astype(np.float32)


def apply_curve(volume: np.ndarray, curve: str) -> np.ndarray:
    """``volume`` through one of :data:`CURVES`, as float32 in [0, 1000].

    Raises:
        ValueError: an unknown curve.

    Example:
        >>> v = np.linspace(0, 1, 1000).reshape(10, 10, 10)
        >>> bool(apply_curve(v, "invert")[0, 0, 0] == 0), bool(apply_curve(v, "invert")[9, 9, 5] < 100)
        (True, True)
    """
    _check_curve(curve)
    return _through(curve, *_scaled(volume))


def write_contrast_cases(data: str | Path, out: str | Path, curves: Sequence[str] = tuple(CURVES)) -> list[dict]:
    """Write every annotated NIfTI image of ``data`` through each curve, with its mask.

    Args:
        data: a datastore-style folder: NIfTI images at the top, masks under
            ``labels/final/<image file name>``. Images without a mask are left out.
        out: the folder to write (``<stem>_<curve>`` images and their masks); created if missing.
        curves: names of :data:`CURVES`.

    Returns:
        ``[{"name", "image", "curve"}]`` of the written cases.

    Raises:
        ValueError: an unknown curve, no curve, or no annotated NIfTI image in ``data``.

    Example:
        >>> write_contrast_cases("my_cases", "runs/contrasts", ["invert"])  # doctest: +SKIP
        [{'name': 'case1_invert', 'image': 'case1.nii.gz', 'curve': 'invert'}]
    """
    if not curves:
        raise ValueError("name at least one curve")
    for curve in curves:
        _check_curve(curve)
    data, out = Path(data), Path(out)
    final = data / "labels" / "final"
    images = sorted(p for p in data.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)
                    and (final / p.name).is_file()) if data.is_dir() else []
    if not images:
        raise ValueError(f"{data}: no NIfTI image with a mask under labels/final/")
    (out / "labels" / "final").mkdir(parents=True, exist_ok=True)
    cases = []
    for path in images:
        stem, suffix = nifti_stem(path)
        img = nib.load(str(path))
        scaled, body = _scaled(np.asarray(img.dataobj, dtype=np.float32))  # once per image, not per curve
        for curve in curves:
            name = f"{stem}_{curve}"
            nib.save(nib.Nifti1Image(_through(curve, scaled, body), img.affine), str(out / f"{name}{suffix}"))
            shutil.copyfile(final / path.name, out / "labels" / "final" / f"{name}{suffix}")
            cases.append({"name": name, "image": path.name, "curve": curve})
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.contrast_cases --data FOLDER --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.contrast_cases", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="NIfTI images at the top, masks under labels/final/<image file name>")
    p.add_argument("--out", required=True, help="the datastore-style folder to write")
    p.add_argument("--curves", type=lambda s: [c.strip() for c in s.split(",") if c.strip()], default=list(CURVES),
                   metavar="C,C,...", help=f"which curves (default: {','.join(CURVES)})")
    args = p.parse_args(argv)
    try:
        cases = write_contrast_cases(args.data, args.out, args.curves)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for case in cases:
        print(f"{case['name']}  {case['image']} through {case['curve']}")
    print(f"{len(cases)} cases written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
