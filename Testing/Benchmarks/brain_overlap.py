"""When do two skull-stripped scans show one brain? Prints the ``brain_overlap`` Dice per case.

    PYTHONPATH=Resources/Python:MedNCASegment:OSSNetSegment python Testing/Benchmarks/brain_overlap.py

For each BraTS case (``../shared/data/BraTS_sample``) the FLAIR is the reference and the same
patient's T1c is given as stored; stored at 1.5, 2 and 3 mm and in 5 mm slices (resampled
linearly, the background beyond kept); in 5 and 7 mm axial slabs (each the mean of the 1 mm
slices it covers, as a 2D acquisition); stored at 2 mm and resampled back onto its 1 mm grid
after skull-stripping (its edge blurred: a known false warning); cropped to its brain (2 mm
around it); moved 1, 2, 3, 6 and 10 mm along R, A and S in its header (a scan not registered to
the FLAIR); and, in the last row, every other case's T1c (another patient).
``input_checks.MIN_BRAIN_OVERLAP`` is chosen between the rows that must pass and those that must
warn.
"""

from __future__ import annotations

import numpy as np

from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import crop_to_corners
from EfficientSegmentationCommon.input_checks import MIN_BRAIN_OVERLAP, brain_overlap
from EfficientSegmentationCommon.resampling import resample
from OSSNetSegmentLib.data import INPUT_FILES

from robustness_benchmark import DATA

BRATS = DATA / "BraTS_sample"


def read(path) -> tuple[np.ndarray, VolumeGeometry]:
    """A NIfTI file as a KJI float32 array and its geometry (nibabel's RAS affine)."""
    import nibabel

    image = nibabel.load(str(path))
    array = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0))
    return array, VolumeGeometry(image.affine.astype(np.float64), array.shape)


def variants(t1c: np.ndarray, geometry: VolumeGeometry):
    """(row name, array, geometry) of the same patient's T1c as stored, re-sampled and moved."""
    yield "as stored", t1c, geometry
    for spacing in [(1.5, 1.5, 1.5), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0), (1.0, 1.0, 5.0)]:
        coarse = geometry.with_spacing(spacing)
        yield f"stored at {spacing} mm", resample(t1c, geometry, coarse, fill=float(t1c.min())), coarse
    for thickness in (5, 7):  # axial slices, each the mean of the 1 mm slices it covers (a 2D acquisition)
        count = t1c.shape[0] // thickness
        slabs = t1c[:count * thickness].reshape(count, thickness, *t1c.shape[1:]).mean(axis=1)
        matrix = geometry.ijk_to_ras.copy()
        matrix[:3, 2] *= thickness
        matrix[:3, 3] = geometry.voxel_to_ras((0, 0, (thickness - 1) / 2))
        yield f"{thickness} mm slabs", slabs, VolumeGeometry(matrix, slabs.shape)
    coarse = geometry.with_spacing((2.0, 2.0, 2.0))
    back = resample(resample(t1c, geometry, coarse, fill=float(t1c.min())), coarse, geometry, fill=float(t1c.min()))
    yield "2 mm, resampled back to 1 mm", back, geometry
    brain_ijk = np.argwhere(t1c > t1c.min())[:, ::-1]
    corners = geometry.voxel_to_ras(np.array([brain_ijk.min(axis=0) - 2, brain_ijk.max(axis=0) + 2]))
    box, cropped = crop_to_corners(geometry, corners, "the brain")
    yield "cropped to its brain", t1c[box], cropped
    for mm in [1, 2, 3, 6, 10]:
        for axis in range(3):  # moved along R, A, S
            moved = geometry.ijk_to_ras.copy()
            moved[axis, 3] += mm
            yield f"{mm} mm off (header)", t1c, VolumeGeometry(moved, geometry.shape_kji)


def main() -> int:
    cases = sorted(p for p in BRATS.iterdir() if p.is_dir())
    scans = {case.name: (read(case / INPUT_FILES["FLAIR"]), read(case / INPUT_FILES["T1c"])) for case in cases}
    rows: dict[str, list[float]] = {}
    for name, ((flair, flair_grid), (t1c, t1c_grid)) in scans.items():
        for row, image, grid in variants(t1c, t1c_grid):
            rows.setdefault(row, []).append(brain_overlap(flair, flair_grid, image, grid))
        for other, (_, (other_t1c, other_grid)) in scans.items():
            if other != name:
                rows.setdefault("another patient's T1c", []).append(brain_overlap(flair, flair_grid, other_t1c, other_grid))
    print(f"Dice of the FLAIR's and the T1c's brains, {len(cases)} BraTS cases (warned below {MIN_BRAIN_OVERLAP})")
    print(f"{'T1c':32s} {'min':>6s} {'max':>6s} warned")
    for row, values in rows.items():
        warned = sum(value < MIN_BRAIN_OVERLAP for value in values)
        print(f"{row:32s} {min(values):6.3f} {max(values):6.3f} {warned} of {len(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
