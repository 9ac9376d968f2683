"""Med-NCA and OSS-Net on thick-slice scans as a radiologist loads them: what slice spacing still gives a good result.

    PYTHONPATH=Resources/Python:MedNCASegment:OSSNetSegment python Testing/Benchmarks/thick_slice_scans.py \
        --spacings 2,3,4,5 --axes K --threads 1 --json runs/thick_scans.json
    PYTHONPATH=... python Testing/Benchmarks/thick_slice_scans.py --model ossnet --spacings 3,5,7 \
        --thick FLAIR,both --json runs/thick_ossnet.json

The robustness benchmark's "thick slices" stay on the 1 mm grid. Here each validation crop
(``hippocampus_split.json``) becomes a scan of its own: slices ``spacing`` mm apart and as thick
(each averages the 1 mm voxels it covers, a box slice profile), stored as NIfTI with a header
that places them, loaded with ``load_volume`` and segmented by ``MedNCASegmentLogic`` (``--runs``,
seed 0, otherwise the shipped settings), which resamples it to the model's 1 mm grid and back. The slice
centres lie on voxels of the 1 mm crop, so each result is scored against the expert labels at
exactly those voxels, beside the clean 1 mm crop's result (the same logic) at the same voxels.

Reported per slice axis and spacing: foreground Dice (mean, worst) of both and the drop, and the
foreground volume's error against the expert labels' (mean absolute, %), the scan's volume
counting each voxel at its full size. The drop decides the model's ``maxSpacingMm``
(``Resources/Models.json``; above it ``input_checks.coarse_spacing_warning`` warns): the largest
spacing whose mean drop stays within the 0.03 Dice that issue 14 allows a moderate artefact.

``--model ossnet`` does the same for OSS-Net on the BraTS cases (``brats_split.json``; the
validation case and the four training cases, reported apart): slices along ``--axes`` (K is
axial there) of the FLAIR only (a 2D FLAIR beside a 3D contrast T1, a common protocol), of the
T1c only or of both inputs (``--thick FLAIR,T1c,both``), segmented by ``OSSNetSegmentLogic`` with its default
settings (the output on the first input's grid, the FLAIR's) and scored against the whole-tumour
labels at the slice centres (a thick T1c alone: the output lies on the 1 mm FLAIR's grid, scored
at every voxel). A thin T1c is resampled onto the thick FLAIR's grid by the logic, and a thick
T1c onto the thin FLAIR's, as for a user. With ``--output-spacing 1`` the scan is segmented onto a 1 mm grid instead (OSS-Net
decodes any point), scored at every voxel against the labels, beside the clean result's Dice
over the whole volume.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from robustness_benchmark import DATA, DEFAULT_BRATS_SPLIT, DEFAULT_SPLIT  # noqa: E402

AXES = {"I": 0, "J": 1, "K": 2}  # NIfTI array axes (I, J, K); Med-NCA slices along K


def slab_weights(length: int, centre: int, spacing: float) -> np.ndarray:
    """Weights (length,) of the 1 mm voxels in a slice ``spacing`` mm thick centred on voxel
    ``centre``: each voxel's overlap with the slab, normalised (a box slice profile)."""
    positions = np.arange(length)
    overlap = np.clip(np.minimum(positions + 0.5, centre + spacing / 2) - np.maximum(positions - 0.5, centre - spacing / 2),
                      0.0, None)
    return overlap / overlap.sum()


def slice_centres(length: int, spacing: int) -> np.ndarray:
    """Voxel indices of slice centres ``spacing`` voxels apart, spread about evenly over
    ``length`` voxels, on voxels (so that the expert labels there are exact)."""
    count = (length - 1) // spacing + 1
    first = ((length - 1) - (count - 1) * spacing) // 2
    return first + spacing * np.arange(count)


def thick_scan(image_ijk: np.ndarray, affine: np.ndarray, axis: int, spacing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop (1 mm voxels, IJK) as a scan with slices ``spacing`` mm apart and thick along
    ``axis`` (of I, J, K).

    Returns the image (IJK, its slices along ``axis``), its affine (the slices placed at their
    centres) and the centres' voxel indices on the 1 mm crop.
    """
    length = image_ijk.shape[axis]
    centres = slice_centres(length, spacing)
    weights = np.stack([slab_weights(length, c, spacing) for c in centres])  # (slices, length)
    moved = np.moveaxis(image_ijk.astype(np.float64), axis, -1)
    thick = np.moveaxis(moved @ weights.T, -1, axis).astype(np.float32)
    index_to_crop = np.eye(4)
    index_to_crop[axis, axis], index_to_crop[axis, 3] = spacing, centres[0]
    return thick, affine @ index_to_crop, centres


def segment_file(logic, paths: Path | list[Path], settings):
    """The logic's result (``labels``, KJI, on ``geometry``) for the NIfTI file(s) at ``paths``
    (one per model input), as a user's run gives it."""
    from EfficientSegmentationCommon.scene import load_volume

    volumes = [load_volume(logic.scene, str(path)) for path in (paths if isinstance(paths, list) else [paths])]
    result = logic.segment(volumes if len(volumes) > 1 else volumes[0], settings)
    logic.scene.Clear(0)
    return result


def score(case_id: str, axis_name: str, spacing: int, clean_kji: np.ndarray, scan_kji: np.ndarray,
          truth_kji: np.ndarray, centres: np.ndarray, affine: np.ndarray, **extra) -> dict:
    """One row: the clean and the scan result's foreground Dice against the expert labels at the
    slice ``centres`` (voxel indices along the slice axis of the 1 mm grid), and both results'
    volume errors against the expert labels' volume (the scan's voxels of ``affine``'s size)."""
    from EfficientSegmentationCommon.metrics import dice

    kji_axis = 2 - AXES[axis_name]
    truth_at = np.take(truth_kji, centres, axis=kji_axis)
    clean_at = np.take(clean_kji, centres, axis=kji_axis)
    truth_mm3 = float(truth_kji.sum())  # 1 mm voxels
    row = {"case": case_id, "axis": axis_name, "spacing": spacing, **extra,
           "clean": dice(clean_at, truth_at), "scan": dice(scan_kji, truth_at),
           "clean_volume_error": abs(float(clean_kji.sum()) - truth_mm3) / truth_mm3,
           "scan_volume_error": abs(float(scan_kji.sum()) * abs(np.linalg.det(affine[:3, :3])) - truth_mm3) / truth_mm3}
    label = " ".join(f"{value}" for value in extra.values())
    print(f"{case_id} {label} {axis_name} {spacing} mm: clean {row['clean']:.4f}, scan {row['scan']:.4f}", flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    """The markdown table of per-case ``rows``: one line per slice axis and spacing (OSS-Net's
    rows also per split part and thick inputs, in the first columns)."""
    extra = [key for key in ("part", "thick", "output") if any(key in r for r in rows)]
    lines = ["| " + "".join(f"{key} | " for key in extra) + "slice axis | spacing (mm) | cases | clean Dice | scan Dice | "
             "drop | worst scan Dice | volume error, clean | volume error, scan |",
             "|" + "---|" * len(extra) + "---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = sorted({(*(r.get(key, "") for key in extra), r["axis"], r["spacing"]) for r in rows},
                    key=lambda k: (*k[:-2], "KJI".index(k[-2]), k[-1]))
    for group_key in groups:
        group = [r for r in rows if (*(r.get(key, "") for key in extra), r["axis"], r["spacing"]) == group_key]
        clean, scan = (np.array([r[k] for r in group]) for k in ("clean", "scan"))
        errors = [100 * np.mean([r[k] for r in group]) for k in ("clean_volume_error", "scan_volume_error")]
        lines.append("| " + "".join(f"{value} | " for value in group_key[:-2]) +
                     f"{group_key[-2]} | {group_key[-1]} | {len(group)} | {clean.mean():.4f} | {scan.mean():.4f} | "
                     f"{clean.mean() - scan.mean():+.4f} | {scan.min():.4f} | {errors[0]:.1f}% | {errors[1]:.1f}% |")
    return lines


def mednca_rows(args: argparse.Namespace, spacings: list[int], axes: list[str], folder: Path) -> list[dict]:
    """Every validation crop of the hippocampus split as thick-slice scans, through ``MedNCASegmentLogic``."""
    import nibabel
    from EfficientSegmentationCommon.scene import create_scene
    from MedNCASegmentLib.data import read_nifti_kji
    from MedNCASegmentLib.logic import MedNCASegmentLogic
    from MedNCASegmentLib.settings import MedNCASettings

    ids = json.loads(args.split.read_text())["validation"][args.skip:]
    ids = ids[: args.cases] if args.cases else ids
    logic = MedNCASegmentLogic(create_scene(), closed_surface=False)
    settings = MedNCASettings(mode="crop", runs=args.runs)  # hippocampus crops; seed 0
    rows = []
    for case_id in ids:
        image_file = args.data / "imagesTr" / f"{case_id}.nii.gz"
        nifti = nibabel.load(str(image_file))
        image_ijk = np.asarray(nifti.dataobj, dtype=np.float32)
        truth_kji = read_nifti_kji(args.data / "labelsTr" / f"{case_id}.nii.gz").round() > 0
        clean_kji = segment_file(logic, image_file, settings).labels > 0
        for axis_name in axes:
            for spacing in spacings:
                thick, affine, centres = thick_scan(image_ijk, nifti.affine, AXES[axis_name], spacing)
                path = folder / f"{case_id}_{axis_name}{spacing}.nii.gz"
                nibabel.save(nibabel.Nifti1Image(thick, affine), str(path))
                scan_kji = segment_file(logic, path, settings).labels > 0
                rows.append(score(case_id, axis_name, spacing, clean_kji, scan_kji, truth_kji, centres, affine))
    return rows


def ossnet_rows(args: argparse.Namespace, spacings: list[int], axes: list[str], folder: Path) -> list[dict]:
    """Every BraTS case as thick-slice scans (the FLAIR only, or both inputs), through ``OSSNetSegmentLogic``."""
    import nibabel
    from EfficientSegmentationCommon.geometry import VolumeGeometry
    from EfficientSegmentationCommon.metrics import dice
    from EfficientSegmentationCommon.resampling import resample
    from EfficientSegmentationCommon.scene import create_scene
    from OSSNetSegmentLib.data import INPUT_FILES, LABELS_FILE, case_ids, read_nifti_kji
    from OSSNetSegmentLib.logic import OSSNetSegmentLogic
    from OSSNetSegmentLib.settings import OSSNetSettings

    split = json.loads(args.brats_split.read_text())
    ids = case_ids(args.brats)[args.skip:]
    ids = ids[: args.cases] if args.cases else ids
    logic = OSSNetSegmentLogic(create_scene(), closed_surface=False)
    clean_settings = OSSNetSettings()
    settings = OSSNetSettings(output_spacing=args.output_spacing) if args.output_spacing else clean_settings
    thick_choices = [choice.strip() for choice in args.thick.split(",")]
    rows = []
    for case_id in ids:
        part = "validation" if case_id in split["validation"] else "train"
        files = [args.brats / case_id / INPUT_FILES[name] for name in ("FLAIR", "T1c")]
        truth_kji = read_nifti_kji(args.brats / case_id / LABELS_FILE)[0].round() > 0
        clean_kji = segment_file(logic, files, clean_settings).labels > 0
        niftis = [nibabel.load(str(path)) for path in files]
        truth_grid = VolumeGeometry(niftis[0].affine, truth_kji.shape)
        for choice in thick_choices:
            made_thick = [choice in ("FLAIR", "both"), choice in ("T1c", "both")]
            for axis_name in axes:
                for spacing in spacings:
                    paths = []
                    for path, nifti, thick_input in zip(files, niftis, made_thick, strict=True):
                        if not thick_input:
                            paths.append(path)
                            continue
                        image_ijk = np.asarray(nifti.dataobj, dtype=np.float32)
                        thick, affine, centres = thick_scan(image_ijk, nifti.affine, AXES[axis_name], spacing)
                        paths.append(folder / f"{case_id}_{path.name.split('_')[0]}_{axis_name}{spacing}.nii.gz")
                        nibabel.save(nibabel.Nifti1Image(thick, affine), str(paths[-1]))
                    if args.output_spacing is None and made_thick[0]:  # the output on the thick FLAIR's grid
                        scan_kji = segment_file(logic, paths, settings).labels > 0
                        thick_affine = nibabel.load(str(paths[0])).affine  # the FLAIR's: the output grid
                        rows.append(score(case_id, axis_name, spacing, clean_kji, scan_kji, truth_kji, centres,
                                          thick_affine, part=part, thick=choice))
                        continue
                    # The output on a fine grid (asked for, or the 1 mm FLAIR's): scored at every voxel.
                    scan = segment_file(logic, paths, settings)
                    truth_there = resample(truth_kji.astype(np.uint8), truth_grid, scan.geometry, order=0) > 0
                    volume_mm3 = abs(np.linalg.det(scan.geometry.ijk_to_ras[:3, :3]))
                    truth_mm3 = float(truth_kji.sum())
                    rows.append({"case": case_id, "axis": axis_name, "spacing": spacing, "part": part, "thick": choice,
                                 "output": f"{scan.geometry.spacing[0]:g} mm", "clean": dice(clean_kji, truth_kji),
                                 "scan": dice(scan.labels > 0, truth_there),
                                 "clean_volume_error": abs(float(clean_kji.sum()) - truth_mm3) / truth_mm3,
                                 "scan_volume_error": abs(float((scan.labels > 0).sum()) * volume_mm3 - truth_mm3)
                                 / truth_mm3})
                    print(f"{case_id} {part} {choice} {axis_name} {spacing} mm, output {rows[-1]['output']}: "
                          f"clean {rows[-1]['clean']:.4f}, scan {rows[-1]['scan']:.4f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mednca", "ossnet"), default="mednca")
    parser.add_argument("--data", type=Path, default=DATA / "Task04_Hippocampus")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--brats", type=Path, default=DATA / "BraTS_sample")
    parser.add_argument("--brats-split", type=Path, default=DEFAULT_BRATS_SPLIT)
    parser.add_argument("--thick", default="FLAIR,both", help="OSS-Net: which inputs have thick slices, "
                        "comma-separated: FLAIR (the FLAIR only), T1c (the T1c only), both")
    parser.add_argument("--spacings", default="2,3,4,5", help="slice spacings (whole mm), comma-separated")
    parser.add_argument("--axes", default="K", help="slice axes, comma-separated, of I, J, K (Med-NCA slices along K)")
    parser.add_argument("--cases", type=int, default=None, help="only N cases (default: all 42 validation crops; OSS-Net: all BraTS cases)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N cases (to split the "
                        "work over processes)")
    parser.add_argument("--output-spacing", type=float, default=None, help="OSS-Net: ask for this output spacing "
                        "(mm, e.g. 1) instead of the scan's grid, and score every output voxel")
    parser.add_argument("--runs", type=int, default=10, help="Med-NCA stochastic runs (the shipped setting: 10)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write every case's figures here")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the table of saved --json files together instead of running")
    args = parser.parse_args(argv)
    if args.report:
        rows = [row for path in args.report for row in json.loads(path.read_text())["rows"]]
        print("\n".join(table(rows)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    spacings = [int(s) for s in args.spacings.split(",")]
    axes = [a.strip().upper() for a in args.axes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        rows = (mednca_rows if args.model == "mednca" else ossnet_rows)(args, spacings, axes, Path(folder))
    lines = table(rows)
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "table": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
