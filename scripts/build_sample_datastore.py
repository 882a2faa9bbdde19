#!/usr/bin/env python
"""Build the small sample datastore shipped with UniMed from the shared real-data folder.

The output is a MONAI Label ``LocalDatastore``: images at the top level, final labels in
``labels/final/`` under the same file name as their image, VOC boxes for the 2D
microscopy images in ``annotations/``, licence files in ``LICENSES/`` and a provenance
table in ``SOURCES.md``. Every file is real data taken from the source folder (copied
byte for byte, or only cast / sliced out of a container file); nothing is generated.

The build is deterministic: running it twice gives byte-identical files.

Example:
    python scripts/build_sample_datastore.py --data ../shared/data --out sample_datastore
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

# Value of ``lung_tumor`` in the shared label registry (lib/unimed/labels.py).
LUNG_TUMOR_ID = 6
N_LUNG_PATCHES = 3
N_BCCD_IMAGES = 2
# Marker file whose presence means an existing --out folder was made by this script.
MARKER = "SOURCES.md"

BRATS_CASE = "brats2013/brats_2013_pat{:04d}_1"
BRATS_LICENSE = "brats2013/brats_2013_pat0001_1/License_CC_BY_NC_SA_3.0.txt"
LUNG_H5 = "msd_lung_patches/val_patches.h5"
ADRENAL_NPZ = "adrenalmnist3d/adrenalmnist3d.npz"
BCCD_VAL = "bccd/ImageSets/Main/val.txt"
CT_EXAMPLE = "totalseg_examples/example_ct_sm.nii.gz"

# Dataset name -> (licence, public source / citation).
DATASETS: dict[str, tuple[str, str]] = {
    "BraTS 2013": (
        "CC BY-NC-SA 3.0 CH (non-commercial), `LICENSES/BraTS2013_CC_BY_NC_SA_3.0.txt`",
        "Menze et al., \"The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)\", "
        "IEEE TMI 34(10), 2015; DeepMedic-normalised version by K. Kamnitsas",
    ),
    "MSD Task06 Lung": (
        "CC BY-SA 4.0, `LICENSES/MSD_CC_BY_SA_4.0.md`",
        "Antonelli et al., \"The Medical Segmentation Decathlon\", Nature Communications 13, 2022",
    ),
    "AdrenalMNIST3D (MedMNIST v2)": (
        "CC BY 4.0, `LICENSES/MedMNIST_CC_BY_4.0.txt`",
        "Yang et al., \"MedMNIST v2\", Scientific Data 10, 2023",
    ),
    "BCCD": (
        "MIT, `LICENSES/BCCD_MIT.txt`",
        "BCCD Dataset by Shenggan, https://github.com/Shenggan/BCCD_Dataset",
    ),
    "TotalSegmentator examples": (
        "Apache-2.0, `LICENSES/TotalSegmentator_examples_Apache-2.0.txt`",
        "Wasserthal et al., \"TotalSegmentator\", Radiology: Artificial Intelligence 5(5), 2023",
    ),
}

LICENSE_COPIES: dict[str, str] = {
    BRATS_LICENSE: "LICENSES/BraTS2013_CC_BY_NC_SA_3.0.txt",
    "bccd/LICENSE": "LICENSES/BCCD_MIT.txt",
    "msd_lung_patches/LICENSE.md": "LICENSES/MSD_CC_BY_SA_4.0.md",
    "totalseg_examples/LICENSE": "LICENSES/TotalSegmentator_examples_Apache-2.0.txt",
}

MEDMNIST_LICENSE_TEXT = """\
AdrenalMNIST3D (part of MedMNIST v2)
====================================

The source folder holds no licence file for this dataset, so this note records the terms
under which its publishers release it.

Licence: Creative Commons Attribution 4.0 International (CC BY 4.0)
Licence text: https://creativecommons.org/licenses/by/4.0/

In short, the data may be shared and adapted for any purpose, provided the original
work is credited, a link to the licence is given and any changes are indicated.
This summary is not legal advice and does not replace the licence itself.

Changes made here: two validation volumes (28x28x28, uint8) were taken out of the
official adrenalmnist3d.npz file and written as NIfTI with an identity affine; the
voxel values are unchanged.

Please cite:
Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister
and Bingbing Ni. "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D
biomedical image classification." Scientific Data 10, 41 (2023).
Dataset home page: https://medmnist.com/
"""


@dataclass(frozen=True)
class Entry:
    """One row of the provenance table in SOURCES.md."""

    shipped: str
    source: str
    change: str
    dataset: str


def require(data: Path, rel: str) -> Path:
    """Return ``data/rel`` or stop with a clear message if that source file is missing."""
    path = data / rel
    if not path.is_file():
        raise SystemExit(f"missing source file: {path} (is --data the shared data folder?)")
    return path


def nifti_bytes_gz(img: nib.Nifti1Image) -> bytes:
    """Serialise a NIfTI-1 image to gzip bytes with a fixed header time (deterministic)."""
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file byte for byte, creating parent folders."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def prepare_out(out: Path) -> None:
    """Create an empty output folder, clearing one that an earlier run of this script made."""
    if out.exists():
        if not out.is_dir():
            raise SystemExit(f"--out exists and is not a folder: {out}")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise SystemExit(f"--out {out} is not empty and has no {MARKER}; refusing to clear it")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def build_brats(data: Path, out: Path) -> list[Entry]:
    """Copy pat0001/pat0002 FLAIR as is and write pat0001's expert label map as uint8."""
    entries: list[Entry] = []
    flair_rel = BRATS_CASE.format(1) + "/Flair_subtrMeanDivStd.nii.gz"
    label_rel = BRATS_CASE.format(1) + "/OTMultiClass.nii.gz"
    flair_src, label_src = require(data, flair_rel), require(data, label_rel)

    copy_file(flair_src, out / "brats_pat0001_flair.nii.gz")
    entries.append(Entry("brats_pat0001_flair.nii.gz", flair_rel, "none (copied byte for byte)", "BraTS 2013"))

    flair = nib.load(flair_src)
    label = nib.load(label_src)
    if label.shape != flair.shape or not np.allclose(label.affine, flair.affine):
        raise SystemExit(f"{label_rel} does not match the geometry of {flair_rel}")
    values = np.asarray(label.dataobj, dtype=np.float64)
    ints = np.rint(values)
    if not np.array_equal(values, ints) or ints.min() < 0 or ints.max() > 4:
        raise SystemExit(f"{label_rel} holds values other than the integers 0..4")
    header = label.header.copy()
    header.set_data_dtype(np.uint8)
    lab_img = nib.Nifti1Image(ints.astype(np.uint8), flair.affine, header)
    lab_img.header.set_slope_inter(1.0, 0.0)
    write_bytes(out / "labels/final/brats_pat0001_flair.nii.gz", nifti_bytes_gz(lab_img))
    entries.append(
        Entry(
            "labels/final/brats_pat0001_flair.nii.gz",
            label_rel,
            "cast float32 -> uint8 (values 0..4 kept: 1 necrosis, 2 edema, 3 non-enhancing, "
            "4 enhancing); affine and shape of the FLAIR",
            "BraTS 2013",
        )
    )

    flair2_rel = BRATS_CASE.format(2) + "/Flair_subtrMeanDivStd.nii.gz"
    copy_file(require(data, flair2_rel), out / "brats_pat0002_flair.nii.gz")
    entries.append(
        Entry("brats_pat0002_flair.nii.gz", flair2_rel, "none (copied byte for byte); unlabelled", "BraTS 2013")
    )
    return entries


def build_lung(data: Path, out: Path) -> list[Entry]:
    """Save the first patches of the MSD lung HDF5 that contain tumour as 2D NIfTI."""
    import h5py  # imported here so --help works without h5py installed

    src = require(data, LUNG_H5)
    with h5py.File(src, "r") as h5:
        images = np.asarray(h5["images"])
        masks = np.asarray(h5["labels"])
    if images.ndim != 4 or images.shape[1:] != (1, 48, 48) or masks.shape != images.shape:
        raise SystemExit(f"{LUNG_H5}: expected images/labels of shape N x 1 x 48 x 48, got {images.shape}")
    with_tumour = np.flatnonzero(masks.reshape(len(masks), -1).sum(axis=1) > 0)
    if len(with_tumour) < N_LUNG_PATCHES:
        raise SystemExit(f"{LUNG_H5}: fewer than {N_LUNG_PATCHES} patches contain tumour")

    entries: list[Entry] = []
    eye = np.eye(4)
    for k, idx in enumerate(with_tumour[:N_LUNG_PATCHES]):
        name = f"lung_patch_{k:03d}.nii.gz"
        img = nib.Nifti1Image(images[idx, 0].astype(np.float32), eye)
        img.header.set_data_dtype(np.float32)
        write_bytes(out / name, nifti_bytes_gz(img))
        n_vox = int(masks[idx, 0].sum())
        change = (
            f"patch index {idx} of val_patches.h5 (images[{idx}, 0], float32 in [0, 1]; "
            f"{n_vox} tumour pixels), 2D NIfTI 48x48, identity affine"
        )
        entries.append(Entry(name, LUNG_H5, change + ("" if k == 0 else "; unlabelled"), "MSD Task06 Lung"))
        if k == 0:
            mask = np.where(masks[idx, 0] > 0, LUNG_TUMOR_ID, 0).astype(np.uint8)
            lab = nib.Nifti1Image(mask, eye)
            lab.header.set_data_dtype(np.uint8)
            write_bytes(out / "labels/final" / name, nifti_bytes_gz(lab))
            entries.append(
                Entry(
                    f"labels/final/{name}",
                    LUNG_H5,
                    f"labels[{idx}, 0] (0/1 float64) -> uint8 with tumour = {LUNG_TUMOR_ID} "
                    "(registry id of `lung_tumor`), 0 elsewhere; identity affine",
                    "MSD Task06 Lung",
                )
            )
    return entries


def build_adrenal(data: Path, out: Path) -> list[Entry]:
    """Save the first validation volume of each class (0 normal, 1 hyperplasia) as NIfTI."""
    src = require(data, ADRENAL_NPZ)
    with np.load(src) as npz:
        images = npz["val_images"]
        labels = npz["val_labels"].reshape(-1)
    entries: list[Entry] = []
    names = {0: "normal", 1: "adrenal hyperplasia"}
    for k, cls in enumerate((0, 1)):
        hits = np.flatnonzero(labels == cls)
        if len(hits) == 0:
            raise SystemExit(f"{ADRENAL_NPZ}: no validation volume with label {cls}")
        idx = int(hits[0])
        name = f"adrenal_val_{k:03d}.nii.gz"
        img = nib.Nifti1Image(images[idx].astype(np.uint8), np.eye(4))
        img.header.set_data_dtype(np.uint8)
        write_bytes(out / name, nifti_bytes_gz(img))
        change = (
            f"val_images[{idx}] (28x28x28 uint8, values unchanged), identity affine; "
            f"true class {cls} = {names[cls]} (val_labels[{idx}])"
        )
        entries.append(Entry(name, ADRENAL_NPZ, change, "AdrenalMNIST3D (MedMNIST v2)"))
    return entries


def build_bccd(data: Path, out: Path) -> list[Entry]:
    """Copy the first validation JPEGs of BCCD and their Pascal VOC XML byte for byte."""
    val = require(data, BCCD_VAL).read_text().split()
    if len(val) < N_BCCD_IMAGES:
        raise SystemExit(f"{BCCD_VAL}: fewer than {N_BCCD_IMAGES} ids")
    entries: list[Entry] = []
    for img_id in val[:N_BCCD_IMAGES]:
        jpg_rel, xml_rel = f"bccd/JPEGImages/{img_id}.jpg", f"bccd/Annotations/{img_id}.xml"
        copy_file(require(data, jpg_rel), out / f"bccd_{img_id}.jpg")
        copy_file(require(data, xml_rel), out / f"annotations/bccd_{img_id}.xml")
        entries.append(Entry(f"bccd_{img_id}.jpg", jpg_rel, "none (copied byte for byte)", "BCCD"))
        entries.append(
            Entry(
                f"annotations/bccd_{img_id}.xml",
                xml_rel,
                "none (copied byte for byte; its `<filename>` still reads the original name)",
                "BCCD",
            )
        )
    return entries


def build_ct(data: Path, out: Path) -> list[Entry]:
    """Copy the TotalSegmentator 3 mm example CT (raw Hounsfield units) as is."""
    copy_file(require(data, CT_EXAMPLE), out / "ct_abdomen_3mm.nii.gz")
    return [
        Entry(
            "ct_abdomen_3mm.nii.gz",
            CT_EXAMPLE,
            "none (copied byte for byte; int16 Hounsfield units); unlabelled",
            "TotalSegmentator examples",
        )
    ]


def build_licenses(data: Path, out: Path) -> list[Entry]:
    """Copy each dataset's licence file and write the MedMNIST licence note."""
    entries: list[Entry] = []
    for rel, dst in LICENSE_COPIES.items():
        copy_file(require(data, rel), out / dst)
    write_bytes(out / "LICENSES/MedMNIST_CC_BY_4.0.txt", MEDMNIST_LICENSE_TEXT.encode("utf-8"))
    return entries


def sources_markdown(entries: list[Entry]) -> str:
    """Render the provenance table and dataset notes as Markdown."""
    lines = [
        "# Sample datastore: sources",
        "",
        "Real medical images and expert labels only; nothing here was generated. Built by",
        "`scripts/build_sample_datastore.py --data <shared data folder> --out sample_datastore`;",
        "source paths are relative to that data folder. Images sit at the top level, final",
        "labels in `labels/final/` under the image's file name, BCCD boxes (Pascal VOC) in",
        "`annotations/`, licence files in `LICENSES/`.",
        "",
        "| shipped file | source file | change | dataset | licence | public source / citation |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        licence, citation = DATASETS[e.dataset]
        lines.append(
            f"| `{e.shipped}` | `{e.source}` | {e.change} | {e.dataset} | {licence} | {citation} |"
        )
    lines += [
        "",
        "## Notes",
        "",
        "- **BraTS 2013 is licensed for non-commercial use only** (CC BY-NC-SA 3.0 CH). The",
        "  FLAIR volumes are the DeepMedic version: intensities already z-scored inside the",
        "  brain. Label values equal the UniMed registry ids 1..4.",
        f"- The lung label uses value {LUNG_TUMOR_ID}, the registry id of `lung_tumor`. Lung",
        "  patches are the first patches of `val_patches.h5` whose mask is not empty; the",
        "  HDF5 array axes (row, column) are written as NIfTI axes (i, j) unchanged.",
        "- AdrenalMNIST3D is a classification set: its volumes have no label map. The true",
        "  class of each shipped volume is in the table (0 normal, 1 adrenal hyperplasia;",
        "  registry names `adrenal_normal` and `adrenal_hyperplasia`).",
        "- TotalSegmentator's example label maps are a model's output, not expert labels, so",
        "  none is shipped for the CT.",
        "",
        "## Licence files",
        "",
        "| file | dataset | source |",
        "|---|---|---|",
    ]
    for rel, dst in LICENSE_COPIES.items():
        lines.append(f"| `{dst}` | {_dataset_of_license(dst)} | `{rel}` (copied byte for byte) |")
    lines.append(
        "| `LICENSES/MedMNIST_CC_BY_4.0.txt` | AdrenalMNIST3D (MedMNIST v2) | written for this "
        "datastore (no licence file in the source): licence name, URL and citation |"
    )
    return "\n".join(lines) + "\n"


def _dataset_of_license(dst: str) -> str:
    """Name the dataset a copied licence file belongs to."""
    for key, ds in (("BraTS", "BraTS 2013"), ("BCCD", "BCCD"), ("MSD", "MSD Task06 Lung"),
                    ("TotalSeg", "TotalSegmentator examples")):
        if key in dst:
            return ds
    raise ValueError(dst)


def build(data: Path, out: Path) -> list[Entry]:
    """Build the whole datastore from ``data`` into ``out`` and return its provenance rows."""
    if not data.is_dir():
        raise SystemExit(f"--data is not a folder: {data}")
    # Check every source up front so a missing file fails before anything is written.
    for rel in (
        BRATS_CASE.format(1) + "/Flair_subtrMeanDivStd.nii.gz",
        BRATS_CASE.format(1) + "/OTMultiClass.nii.gz",
        BRATS_CASE.format(2) + "/Flair_subtrMeanDivStd.nii.gz",
        LUNG_H5, ADRENAL_NPZ, BCCD_VAL, CT_EXAMPLE, *LICENSE_COPIES,
    ):
        require(data, rel)
    prepare_out(out)
    entries: list[Entry] = []
    for step in (build_brats, build_lung, build_adrenal, build_bccd, build_ct, build_licenses):
        entries += step(data, out)
    write_bytes(out / MARKER, sources_markdown(entries).encode("utf-8"))
    return entries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Rebuild UniMed's sample MONAI Label datastore from the shared real-data folder.",
    )
    parser.add_argument("--data", type=Path, required=True, help="shared data folder (with brats2013/, bccd/, ...)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("sample_datastore"),
        help="output folder; cleared first if an earlier run made it (default: sample_datastore)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    entries = build(args.data, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(entries)} data files to {args.out} ({total / 1e6:.1f} MB in all)")


if __name__ == "__main__":
    main()
