"""Write BraTS cases as another site's protocol would frame them: another voxel size, a wider field of view.

The anatomy and the expert labels stay the same; only the acquisition geometry changes, which is
what a model meets at a new site. Images are resampled trilinearly, label maps and brain masks by
nearest neighbour, then padded (with each volume's background value, read at its corner) to the
field of view, centred. Every other file of a case (the licence) is copied.

Usage:
    python scripts/reframe_brats.py --data ../shared/data/brats2013 --out /tmp/brats_wide --spacing 1.5 --fov 384

Then ``python main.py evaluate --dataset brats --data /tmp/brats_wide`` measures the shipped model on it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

LABEL_PREFIXES = ("otmulticlass", "brainmask")


def reframe(volume: np.ndarray, spacing: float, fov: float, *, labels: bool, source_spacing: np.ndarray) -> np.ndarray:
    """``volume`` at ``source_spacing`` resampled to isotropic ``spacing`` mm and padded (never cropped) so that
    each in-plane side spans ``fov`` mm; the slice axis keeps its extent."""
    size = [max(1, round(n * s / spacing)) for n, s in zip(volume.shape, source_spacing)]
    x = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32)[None, None]
    x = F.interpolate(x, size=size, mode="nearest" if labels else "trilinear", **({} if labels else {"align_corners": False}))
    out = x[0, 0].numpy()
    target = [max(n, round(fov / spacing)) for n in out.shape[:2]] + [out.shape[2]]
    pad = [((t - n) // 2, t - n - (t - n) // 2) for t, n in zip(target, out.shape)]
    return np.pad(out, pad, constant_values=float(volume[0, 0, 0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a folder of BraTS case folders (../shared/data/brats2013)")
    parser.add_argument("--out", required=True, help="where the reframed cases go (created)")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (default %(default)s)")
    parser.add_argument("--fov", type=float, default=360.0, help="in-plane field of view in mm (default %(default)s)")
    args = parser.parse_args(argv)
    if args.spacing <= 0 or args.fov <= 0:
        parser.error("--spacing and --fov must be positive")
    cases = sorted(p for p in Path(args.data).iterdir() if p.is_dir()) if Path(args.data).is_dir() else []
    if not cases:
        parser.error(f"--data {args.data}: no case folders")
    for case in cases:
        dest = Path(args.out) / case.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(case.iterdir()):
            if not f.name.endswith((".nii", ".nii.gz")):
                shutil.copy2(f, dest / f.name)
                continue
            img = nib.load(str(f))
            source_spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
            labels = f.name.lower().startswith(LABEL_PREFIXES)
            data = reframe(np.asarray(img.dataobj, dtype=np.float32), args.spacing, args.fov, labels=labels,
                           source_spacing=source_spacing)
            affine = img.affine.copy()
            affine[:3, :3] = affine[:3, :3] / source_spacing * args.spacing
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(dest / f.name))
        print(f"{case.name}: {tuple(data.shape)} at {args.spacing} mm", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
