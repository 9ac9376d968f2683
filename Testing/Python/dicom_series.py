"""Test DICOM series made from real NIfTI cases, as SimpleITK's "DICOM series from array" example does.

One file per slice (ImageSeriesWriter's per-slice tags: position, orientation, instance number,
slice thickness); the float voxels are stored as int32 with a rescale slope of
:data:`RESCALE_SLOPE`, so the values read back are the NIfTI's within half of it. For tests only:
written to temporary folders, never committed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import SimpleITK as sitk

RESCALE_SLOPE = 0.001
UID_ROOT = "1.2.826.0.1.3680043.2.1125.1"  # the SimpleITK example's root, for test series only


def write_series(image: sitk.Image, folder: Path, series: int, description: str, slices=None) -> None:
    """``image`` as a DICOM series (one file per slice) in ``folder``; ``slices``: which K indices."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    tags = [("0008|0008", "DERIVED\\SECONDARY"), ("0008|0060", "MR"), ("0008|103e", description),
            ("0020|000d", f"{UID_ROOT}.{series}"), ("0020|000e", f"{UID_ROOT}.{series}.1"),
            ("0020|0037", "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
            ("0018|0050", f"{image.GetSpacing()[2]:.10g}"),
            ("0028|1053", str(RESCALE_SLOPE)), ("0028|1052", "0"),  # real values = stored x 0.001
            ("0028|0100", "32"), ("0028|0101", "32"), ("0028|0102", "31"), ("0028|0103", "1")]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in (range(image.GetDepth()) if slices is None else slices):
        plane = image[:, :, index]
        for tag, value in tags:
            plane.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        plane.SetMetaData("0020|0013", str(index + 1))
        plane.SetMetaData("0008|0018", f"{UID_ROOT}.{series}.1.{index + 1}")
        writer.SetFileName(str(folder / f"slice{index:04d}.dcm"))
        writer.Execute(plane)


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    """Zip the files under ``folder`` (names relative to it, after ``prefix``) into ``target``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return target
