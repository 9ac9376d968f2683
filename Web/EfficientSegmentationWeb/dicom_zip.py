"""A zipped DICOM series as an image file the scene loads: unpack safely, read with SimpleITK.

Supported: a ``.zip`` holding classic single-frame DICOM images (one file per slice, as
scanners and PACS exports write MR and CT series), in any folders inside the zip, with or
without a DICOMDIR; stored pixel values with a rescale slope and intercept are read as the real
values (SimpleITK/GDCM apply them). The series is grouped by its Series Instance UID and its
slices are sorted along the slice normal by GDCM (``ImageSeriesReader.GetGDCMSeriesIDs`` and
``GetGDCMSeriesFileNames``, the reader the SimpleITK documentation recommends), so the geometry
(origin, spacing, direction cosines) is ITK's, the same ITK that reads NIfTI and NRRD in Slicer.
The volume is written to a NRRD file in the caller's work folder, which the app loads with the
same checks as an uploaded NRRD.

Not supported, each refused with a message: multi-frame (enhanced) DICOM files, a series whose
slices are not evenly spaced or repeat a position (a missing slice, several time points or
echoes in one series), a zip with no DICOM series. A zip with several series loads the one with
the most slices and says which (``DicomSeriesVolume.note``).

Safety: member names are never used as paths (each member is written as a numbered file in
the work folder), so a name like ``../../x`` cannot reach outside it; unpacking stops at
:data:`MAX_UNPACKED_BYTES` bytes (counted on the bytes actually written, not only the sizes the
zip declares) and :data:`MAX_FILES` members, so a zip bomb cannot fill the disk.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from EfficientSegmentationCommon.errors import InputVolumeError

# 2 GiB unpacked: a 1024-slice CT of 512 x 512 int16 pixels is 0.5 GiB; more is not one volume a
# CPU segments, and the server's temporary disk must hold it.
MAX_UNPACKED_BYTES = 2 * 1024 ** 3
MAX_FILES = 20000  # members of the zip (slices plus anything else)
CHUNK_BYTES = 1024 ** 2
# Slices whose spacing along the normal differs from the median by more than this share are
# "not evenly spaced" (ITK itself warns above about 1%; scanners write positions to 0.01 mm).
SPACING_TOLERANCE = 0.01
SERIES_DESCRIPTION, NUMBER_OF_FRAMES = "0008|103e", "0028|0008"


@dataclass(frozen=True)
class DicomSeriesVolume:
    """The series read from a zip: ``image_path`` (NRRD in the work folder), the volume's
    ``name`` (zip name and series description) and ``note`` (which series was loaded when the
    zip held several; "" otherwise)."""

    image_path: Path
    name: str
    note: str


def read_dicom_zip(zip_path: Path, work_folder: Path, max_bytes: int = MAX_UNPACKED_BYTES,
                   max_files: int = MAX_FILES) -> DicomSeriesVolume:
    """Unpack ``zip_path`` into ``work_folder`` (which the caller creates and removes), read its
    DICOM series and write it as ``work_folder/<zip name>.nrrd``.

    Raises:
        InputVolumeError: naming the zip and the problem: not a zip or damaged, encrypted, over
            ``max_bytes`` unpacked or ``max_files`` members, no DICOM series, a multi-frame file,
            unevenly spaced or repeated slices, or a series SimpleITK cannot read.
    """
    import SimpleITK as sitk

    zip_path = Path(zip_path)
    label = f"'{zip_path.name}'"
    slices_folder = Path(work_folder) / "slices"
    slices_folder.mkdir()
    _unpack(zip_path, slices_folder, label, max_bytes, max_files)

    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(slices_folder))
    if not series_ids:
        raise InputVolumeError(f"{label} holds no DICOM series: zip the folder of one DICOM series "
                               "(one file per slice), or upload a NIfTI or NRRD file.")
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(slices_folder), uid) for uid in series_ids}
    chosen = max(series_ids, key=lambda uid: len(files[uid]))
    headers = [_header(path) for path in files[chosen]]
    description = headers[0].GetMetaData(SERIES_DESCRIPTION).strip() \
        if headers[0].HasMetaDataKey(SERIES_DESCRIPTION) else ""
    _check_slices(headers, label)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputVolumeError(f"The DICOM series in {label} cannot be read ({reason}).") from None
    if image.GetPixelID() == sitk.sitkFloat64:  # rescaled values: float32 holds a scanner's precision
        image = sitk.Cast(image, sitk.sitkFloat32)

    stem = zip_path.name[:-len(zip_path.suffix)] if zip_path.suffix else zip_path.name
    name = f"{stem} {description}" if description else stem
    note = ""
    if len(series_ids) > 1:
        others = [uid for uid in series_ids if uid != chosen]
        listed = ", ".join(f"{_description(files[uid][0]) or 'no description'} ({len(files[uid])} files)"
                           for uid in others)
        note = (f"{label} holds {len(series_ids)} DICOM series; loaded the largest, "
                f"'{description or 'no description'}' ({len(files[chosen])} slices). Not loaded: {listed}. "
                "To load another, upload a zip of that series alone.")
    image_path = Path(work_folder) / f"{stem}.nrrd"
    sitk.WriteImage(image, str(image_path))
    return DicomSeriesVolume(image_path, name, note)


def _unpack(zip_path: Path, folder: Path, label: str, max_bytes: int, max_files: int) -> None:
    """Each file member as ``folder/<number>.dcm``, at most ``max_bytes`` bytes and ``max_files`` files."""
    limit = f"{max_bytes / 1024 ** 3:g} GiB" if max_bytes >= 1024 ** 3 else f"{max_bytes} bytes"
    too_big = InputVolumeError(f"{label} unpacks to more than {limit}, the most this server accepts: "
                               "upload one series only.")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            if len(members) > max_files:
                raise InputVolumeError(f"{label} holds {len(members)} files, more than the {max_files} this "
                                       "server accepts: upload one series only.")
            if sum(member.file_size for member in members) > max_bytes:
                raise too_big
            written = 0
            for index, member in enumerate(members):
                with archive.open(member) as source, open(folder / f"{index:06d}.dcm", "wb") as target:
                    while chunk := source.read(CHUNK_BYTES):
                        written += len(chunk)
                        if written > max_bytes:  # a member that declared less than it holds
                            raise too_big
                        target.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise InputVolumeError(f"{label} is not a readable zip file ({error}): it is damaged or not a zip; "
                               "zip the DICOM folder again and upload it.") from None
    except RuntimeError as error:  # zipfile: "File ... is encrypted, password required for extraction"
        raise InputVolumeError(f"{label} cannot be unpacked ({error}): upload a zip without a password.") from None


def _header(path: str):
    """A slice's header (no pixels): its geometry and tags."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _description(path: str) -> str:
    header = _header(path)
    return header.GetMetaData(SERIES_DESCRIPTION).strip() if header.HasMetaDataKey(SERIES_DESCRIPTION) else ""


def _check_slices(headers: list, label: str) -> None:
    """Refuse what the series reader would stack into a wrong volume: multi-frame files, repeated
    positions and uneven slice spacing (positions projected on the first slice's normal)."""
    for header in headers:
        frames = header.GetMetaData(NUMBER_OF_FRAMES).strip() if header.HasMetaDataKey(NUMBER_OF_FRAMES) else "1"
        if frames not in ("", "0", "1"):
            raise InputVolumeError(f"{label} holds a multi-frame (enhanced) DICOM file of {frames} frames, which "
                                   "this app does not read: export the series as one file per slice.")
    if len(headers) < 2:
        return  # one slice: the volume checks refuse it with their own message
    direction = np.array(headers[0].GetDirection(), float).reshape(3, 3)
    positions = np.array([np.dot(direction[:, 2], header.GetOrigin()) for header in headers])
    gaps = np.diff(np.sort(positions))
    median = float(np.median(gaps))
    if median <= 0 or np.any(gaps < 1e-3 * max(median, 1e-3)):
        raise InputVolumeError(f"{label}: its DICOM series has several images at one slice position (several "
                               "time points, echoes or volumes in one series), which this app does not read: "
                               "export one volume as its own series.")
    if np.any(np.abs(gaps - median) > SPACING_TOLERANCE * median):
        raise InputVolumeError(f"{label}: the slices of its DICOM series are not evenly spaced (gaps from "
                               f"{gaps.min():.3g} to {gaps.max():.3g} mm; a missing slice?), so they do not "
                               "form one volume: export the complete series.")
