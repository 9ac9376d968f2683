"""What an image file says about itself, read before Slicer's reader and used again when writing.

Slicer's reader (ITK's NIfTI reader inside ``vtkITKArchetypeImageSeriesReader``) is made for
display, not for voxel-wise tools, and loses or changes facts that matter to them. Measured on
the ``slicer-core`` wheel of this project (5.13):

- a left-handed grid (determinant of the voxel-to-RAS matrix < 0) is loaded with its K axis
  reversed, so a result saved from the node lies on another grid than the input file (same
  place in space, other voxel order and affine);
- when both transforms are set, the qform is used unless the sform code is 1 (scanner), or
  the qform code is 0, while nibabel and FSL use the sform whenever its code is above 0: with
  qform code 1 and sform code 2 Slicer and nibabel put the image in different places;
- a file without orientation (both codes 0) gets ITK's Analyze default (voxel axes along L, P,
  S from the origin 0), nibabel another one (L, A, S around the centre): nobody knows where
  the patient is;
- 4D and multi-component files are refused with about 100 lines of VTK errors;
- a ``.nii.gz`` cut short loads with the missing part as zeros, and NaN voxels become 0.

So every NIfTI input is read here first with nibabel (header, then all voxels once, which also
proves the file complete), damaged or unusable files are refused naming the file, the
transform is chosen as nibabel and FSL choose it (the sform when its code is above 0, else the
qform), disagreements are reported, and label maps are written back on the file's own grid
with nibabel (:func:`save_labels_nifti`). Other formats get a dimension check through
SimpleITK (bundled with Slicer). nibabel is not bundled with Slicer: without it NIfTI files get
no checks here and Slicer's reader alone decides.

Grids use numpy voxel indices in the FILE's order ``(i, j, k)`` here (nibabel's); Slicer
arrays are KJI, and :func:`file_order_labels` converts between the two.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .errors import InputVolumeError, describe_node
from .geometry import VolumeGeometry

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Two transforms that differ by less than this (mm, at any corner of the grid) are the same.
SAME_TRANSFORM_MM = 1e-3
# How far voxel centres may be from a whole index for two grids to be the same up to axis order.
SAME_GRID_VOXELS = 1e-3


@dataclass(frozen=True)
class FileReport:
    """What one image file says about itself.

    ``problem`` is why the file cannot be segmented (None when it can). ``affine`` maps the
    file's voxel indices ``(i, j, k, 1)`` to RAS mm by the transform chosen (``transform``:
    "sform" or "qform", with its ``code``); None when the file has no orientation or is not
    NIfTI. ``candidates`` are the placements a reader may have given the file (name -> 4x4),
    used to recognise which one a volume node got. ``shape_ijk``: the file's 3D voxel shape.
    """

    path: str
    shape_ijk: tuple[int, ...]
    problem: str | None = None
    affine: np.ndarray | None = None
    transform: str = ""
    code: int = 0
    candidates: dict = field(default_factory=dict)
    disagreement_mm: float = 0.0  # largest distance between qform and sform placements of a voxel

    @property
    def spacing(self) -> float:
        """Smallest voxel size (mm) of the chosen placement (1 when none)."""
        if self.affine is None:
            return 1.0
        return float(np.linalg.norm(self.affine[:3, :3], axis=0).min())


def is_nifti(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


_reports: dict[tuple[str, int, int], FileReport] = {}


def inspect_file(path: str | os.PathLike) -> FileReport | None:
    """Read ``path``'s header (and for NIfTI all its voxels, once) and say what it holds.

    Cached per file path, size and modification time, so checking again is free. Returns None
    when nothing can be said (no nibabel for a NIfTI file, no SimpleITK for another format).
    Never raises for a bad file: its ``problem`` says what is wrong.
    """
    path = os.path.abspath(os.fspath(path))
    status = os.stat(path)
    key = (path, status.st_size, status.st_mtime_ns)
    if key not in _reports:
        report = _inspect_nifti(path) if is_nifti(path) else _inspect_other(path)
        if report is None:
            return None
        _reports[key] = report
    return _reports[key]


def _inspect_nifti(path: str) -> FileReport | None:
    try:
        import nibabel
    except ImportError:
        return None
    name = os.path.basename(path)
    try:
        image = nibabel.load(path)
    except Exception as error:  # nibabel raises many kinds for bad headers
        if _uncompressed_gz(path):
            return FileReport(path, (), f"File '{name}' is an uncompressed NIfTI file named .nii.gz; rename it to "
                                        f"'{name[:-len('.gz')]}' (or compress it with gzip).")
        if _gzip_named_nii(path):
            return FileReport(path, (), f"File '{name}' is gzip-compressed but named .nii; rename it to '{name}.gz'.")
        return FileReport(path, (), f"File '{name}' is unreadable: its NIfTI header is damaged or incomplete "
                                    f"(nibabel: {' '.join(str(error).split())}). Use an intact copy.")
    shape = tuple(int(n) for n in image.shape)
    problem = _dimension_problem(name, shape)
    if problem:
        return FileReport(path, shape, problem)
    shape3 = (shape + (1, 1, 1))[:3]
    header = image.header
    try:  # the stored values (no scaling, so no float64 copy of an integer image)
        voxels = np.asanyarray(image.dataobj.get_unscaled())
    except Exception as error:  # EOFError, OSError, zlib.error for a file cut short
        return FileReport(path, shape3, f"File '{name}' is damaged: its voxel data cannot be read to the end "
                                        f"({' '.join(str(error).split())}). Was it cut short while copying? "
                                        "Use an intact copy.")
    if np.issubdtype(voxels.dtype, np.floating):
        nan_count = int(np.count_nonzero(np.isnan(voxels)))
        inf_count = int(np.count_nonzero(np.isinf(voxels)))
        if nan_count or inf_count:
            return FileReport(path, shape3, f"File '{name}' contains {nan_count} NaN and {inf_count} infinite voxels, "
                                            "which Slicer's reader would silently turn into 0; replace them with "
                                            "finite values first (e.g. `fslmaths in -nan out`).")
    del voxels
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    qform = header.get_qform() if qform_code > 0 else None
    sform = header.get_sform() if sform_code > 0 else None
    pixdim = np.abs(np.asarray(header["pixdim"][1:4], dtype=np.float64))
    pixdim = np.where(pixdim > 0, pixdim, 1.0)
    if qform is None and sform is None:
        default = np.diag([-pixdim[0], -pixdim[1], pixdim[2], 1.0])  # ITK's Analyze default, origin 0
        return FileReport(path, shape3, f"File '{name}' has no orientation (its qform_code and sform_code are both 0): "
                                        "where the patient's left, front and top are is unknown, so the model cannot "
                                        "be applied and the result could not be placed. Check which way the patient lies "
                                        "and write the orientation into the header (e.g. nibabel's "
                                        "`set_sform(affine, code=1)`).",
                          candidates={"ITK's default for files without orientation": default})
    candidates = {name_: matrix for name_, matrix in (("sform", sform), ("qform", qform)) if matrix is not None}
    transform = "sform" if sform is not None else "qform"
    disagreement = 0.0
    if qform is not None and sform is not None:
        disagreement = _largest_distance(qform, sform, shape3)
    return FileReport(path, shape3, None, candidates[transform], transform,
                      sform_code if transform == "sform" else qform_code, candidates, disagreement)


def _uncompressed_gz(path: str) -> bool:
    """Whether a ``.nii.gz`` file is a plain NIfTI-1 or -2 file (its magic at byte 344 or 4), not gzip."""
    if not path.lower().endswith(".gz"):
        return False
    with open(path, "rb") as stream:
        head = stream.read(352)
    return not head.startswith(b"\x1f\x8b") and (head[344:347] in (b"n+1", b"ni1") or head[4:7] in (b"n+2", b"ni2"))


def _gzip_named_nii(path: str) -> bool:
    """Whether a ``.nii`` file is gzip-compressed (its first two bytes)."""
    if not path.lower().endswith(".nii"):
        return False
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _dimension_problem(name: str, shape: tuple[int, ...]) -> str | None:
    """Why a file of this (i, j, k, t, c...) shape is not one 3D scalar volume, or None."""
    if len(shape) <= 3:
        return None
    frames = shape[3]
    components = int(np.prod(shape[4:])) if len(shape) > 4 else 1
    if components > 1:
        return (f"File '{name}' has {components} components per voxel (a vector or multi-channel image, e.g. "
                "several sequences stacked in one file): give a 3D volume with one value per voxel, one file "
                "per input.")
    if frames > 1:
        return (f"File '{name}' is a 4D image with {frames} frames: give a 3D volume (e.g. one frame, "
                "extracted with `fslroi` or nibabel), one file per input.")
    return None


def _inspect_other(path: str) -> FileReport | None:
    """Dimension and component count of a non-NIfTI file from its header (SimpleITK)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # Slicer's reader may still read it (it knows more formats); it has the last word
    size = tuple(int(n) for n in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    shape = size + (((1,) * max(0, 4 - len(size)) + (components,)) if components > 1 else ())
    return FileReport(path, size[:3], _dimension_problem(os.path.basename(path), shape))


def _largest_distance(a: np.ndarray, b: np.ndarray, shape_ijk: tuple[int, ...]) -> float:
    """Largest distance (mm) between where ``a`` and ``b`` put a voxel of the grid (at its corners)."""
    corners = np.array([[x, y, z, 1.0] for x in (0, shape_ijk[0] - 1) for y in (0, shape_ijk[1] - 1)
                        for z in (0, shape_ijk[2] - 1)])
    return float(np.max(np.linalg.norm(corners @ (a - b).T, axis=1)))


def index_map(node_ijk_to_ras: np.ndarray, file_affine: np.ndarray) -> np.ndarray | None:
    """The integer 4x4 matrix taking file voxel indices to node voxel indices, when the two grids
    are the same up to axis order, flips and a whole-voxel shift; else None.

    ``node_ijk_to_ras @ result == file_affine`` within ``SAME_GRID_VOXELS`` of a voxel.
    """
    mapping = np.linalg.solve(np.asarray(node_ijk_to_ras, dtype=np.float64), np.asarray(file_affine, dtype=np.float64))
    rounded = np.round(mapping)
    linear = rounded[:3, :3]
    if not np.allclose(mapping, rounded, atol=SAME_GRID_VOXELS):
        return None
    if not (np.all(np.abs(linear).sum(axis=0) == 1) and np.all(np.abs(linear).sum(axis=1) == 1)):
        return None
    return rounded.astype(np.int64)


def placement_of(report: FileReport, geometry: VolumeGeometry) -> str | None:
    """Which of the file's placements a node on ``geometry`` got ("sform", "qform", ...), or None
    when the node's grid is none of them (it was moved or resampled since it was read)."""
    if sorted(geometry.shape_ijk) != sorted(report.shape_ijk):
        return None
    # The chosen one first: when qform and sform agree, the node has the chosen placement.
    names = sorted(report.candidates, key=lambda name: name != report.transform)
    for name in names:
        mapping = index_map(geometry.ijk_to_ras, report.candidates[name])
        if mapping is not None and _maps_onto(mapping, report.shape_ijk, geometry.shape_ijk):
            return name
    return None


def _maps_onto(mapping: np.ndarray, file_shape: tuple[int, ...], node_shape_ijk: tuple[int, ...]) -> bool:
    """True when ``mapping`` takes the file's voxel box exactly onto the node's."""
    corners = np.array([[x, y, z, 1] for x in (0, file_shape[0] - 1) for y in (0, file_shape[1] - 1)
                        for z in (0, file_shape[2] - 1)])
    mapped = corners @ mapping.T
    return bool(np.all(mapped[:, :3].min(axis=0) == 0) and np.all(mapped[:, :3].max(axis=0) == np.array(node_shape_ijk) - 1))


def conform_node(node, report: FileReport) -> None:
    """Give a node Slicer's reader just made from ``report.path`` the placement chosen for the file.

    The node keeps the voxel order Slicer gave it; only its IJK-to-RAS matrix changes, and only
    when Slicer placed the file by the other transform (see the module docstring).
    """
    if report.affine is None:
        return
    geometry = VolumeGeometry.from_volume_node(node)
    used = placement_of(report, geometry)
    if used is None or used == report.transform:
        return
    mapping = index_map(geometry.ijk_to_ras, report.candidates[used])
    placed = report.affine @ np.linalg.inv(mapping)
    VolumeGeometry(placed, geometry.shape_kji).apply_to_volume_node(node)


def transform_warning(report: FileReport, used: str | None) -> str | None:
    """The warning for a file whose qform and sform disagree by more than a voxel, naming both
    transforms' origins, the distance and which one the volume was placed by; else None."""
    if report.disagreement_mm <= report.spacing:
        return None
    qform, sform = report.candidates["qform"], report.candidates["sform"]
    origin = lambda matrix: "(" + ", ".join(f"{v:.1f}" for v in matrix[:3, 3]) + ") mm"  # noqa: E731
    how = {report.transform: f"the {report.transform}, as nibabel and FSL do"}.get(
        used, f"the {used} (Slicer's reader; nibabel and FSL use the {report.transform}), so results differ "
              "between tools")
    return (f"File '{os.path.basename(report.path)}': its qform (origin {origin(qform)}) and sform (origin "
            f"{origin(sform)}) place the image up to {report.disagreement_mm:.1f} mm apart; it was placed by {how}. "
            "Check which is right and make them agree (e.g. `fslorient -copysform2qform`).")


def shadowing_file(path: str | os.PathLike) -> str | None:
    """The ``x.nii`` (a file or a folder) beside a ``x.nii.gz`` file, when there is one, else None.

    Slicer's NIfTI reader (ITK's, through nifti_io, which looks for ``x.nii`` before
    ``x.nii.gz``) takes the voxels of ``x.nii`` with the header of ``x.nii.gz``: another image, or
    scrambled voxels, under the named file's name (measured on slicer-core 5.13; a ``x.nii`` named
    itself is read right). :func:`scene.load_volume` reads such a file on its own;
    :func:`check_source_files` refuses a node Slicer loaded the wrong way."""
    path = os.fspath(path)
    if not path.lower().endswith(".nii.gz"):
        return None
    shadow = path[: -len(".gz")]
    return shadow if os.path.exists(shadow) else None  # a folder of that name too: ITK then reads zeros


def _holds_file_voxels(node, path: str, report: FileReport, used: str) -> bool:
    """Whether the node's voxels are the file's, voxel for voxel in the file's order (the node
    placed by the file's ``used`` transform), read with nibabel; True when nibabel is missing
    (nothing to compare with)."""
    try:
        import nibabel
    except ImportError:
        return True
    from .volume_arrays import voxel_view

    placed = dataclasses.replace(report, affine=report.candidates[used])
    in_file_order = file_order_labels(voxel_view(node), VolumeGeometry.from_volume_node(node), placed)
    expected = np.asanyarray(nibabel.load(path).dataobj)
    return (in_file_order is not None and in_file_order.shape == expected.shape
            and bool(np.allclose(in_file_order, expected, rtol=1e-5, atol=1e-3)))


def source_file(node) -> str | None:
    """The file a volume node was read from (its storage node's), when it still exists."""
    storage = node.GetStorageNode() if node is not None else None
    path = storage.GetFileName() if storage is not None else None
    return path if path and os.path.isfile(path) else None


def check_source_files(volumes) -> list[str]:
    """Check the files the input volume nodes were read from; the warnings to report.

    Applies to nodes that still hold what their file gave (same shape, one of its
    placements): a damaged or unusable file raises ``InputVolumeError`` naming it, a qform
    and sform that disagree give a warning; the same node (or file) for two inputs is refused.
    Nodes made in memory, or moved or resampled since they were read, pass unchecked.
    """
    warnings: list[str] = []
    seen: dict[str, object] = {}
    for node in volumes:
        path = source_file(node)
        if path is None or node.GetImageData() is None:
            continue
        real = os.path.realpath(path)
        if real in seen and seen[real] is not node:
            raise InputVolumeError(f"Two inputs were read from the same file '{os.path.basename(path)}': "
                                   "give each input its own scan.")
        seen[real] = node
        report = inspect_file(path)
        if report is None:
            continue
        geometry = VolumeGeometry.from_volume_node(node)
        if sorted(geometry.shape_ijk) != sorted(report.shape_ijk):
            continue
        used = placement_of(report, geometry)
        shadow = shadowing_file(path)
        if shadow and report.problem is None and used is not None and not _holds_file_voxels(node, path, report, used):
            what = "a folder" if os.path.isdir(shadow) else "another file"
            raise InputVolumeError(
                f"Volume {describe_node(node)} was loaded from '{os.path.basename(path)}', but Slicer's NIfTI reader took "
                f"its voxels from '{os.path.basename(shadow)}' beside it, {what}. Move one of the two into another "
                "folder (or rename it) and load the scan again.")
        if report.problem is not None:
            if used is not None or not report.candidates:  # the node still holds what the file gave
                raise InputVolumeError(report.problem)
            continue
        warning = transform_warning(report, used) if used is not None else None
        if warning:
            warnings.append(warning)
    if len({id(node) for node in volumes if node is not None}) < len([node for node in volumes if node is not None]):
        raise InputVolumeError("The same volume was given for two inputs: give each input its own scan.")
    return warnings


def file_order_labels(labels_kji: np.ndarray, geometry: VolumeGeometry, report: FileReport) -> np.ndarray | None:
    """``labels_kji`` (on ``geometry``) as an array in the file's voxel order (i, j, k) on its grid,
    by exact voxel mapping; None when ``geometry`` is not the file's grid up to axis order,
    flips and whole-voxel shifts. A ``geometry`` covering part of the file's grid (an ROI box)
    is placed into it, 0 outside.
    """
    if report.affine is None:
        return None
    mapping = index_map(geometry.ijk_to_ras, report.affine)
    if mapping is None:
        return None
    node_ijk = np.asarray(labels_kji).transpose(2, 1, 0)
    out = np.zeros(report.shape_ijk, dtype=node_ijk.dtype)
    index_lists, valid_lists = [], []
    for axis in range(3):
        node_axis = int(np.flatnonzero(mapping[:3, axis])[0])
        indices = mapping[node_axis, axis] * np.arange(report.shape_ijk[axis]) + mapping[node_axis, 3]
        valid = (indices >= 0) & (indices < node_ijk.shape[node_axis])
        index_lists.append((node_axis, indices[valid]))
        valid_lists.append(valid)
    node_axes = [axis for axis, _ in index_lists]
    source = node_ijk.transpose(node_axes)
    out[np.ix_(*valid_lists)] = source[np.ix_(*(indices for _, indices in index_lists))]
    return out


def save_labels_nifti(labels_kji: np.ndarray, geometry: VolumeGeometry, path: str | os.PathLike,
                      source: FileReport | None = None) -> bool:
    """Write a label map (KJI, on ``geometry``) to a NIfTI file with nibabel; True when it went
    onto ``source``'s own grid.

    With a ``source`` file whose grid is ``geometry``'s up to axis order and flips, the file
    gets the source's shape, voxel order and affine (voxels mapped exactly, no interpolation),
    so voxel-wise tools can use it beside the input; else it lies on ``geometry``. qform and
    sform are both set to that affine with one code, so every reader places it alike. Written
    to a temporary file first: a failure leaves ``path`` as it was. Raises ``OSError``.
    """
    import nibabel

    array = file_order_labels(labels_kji, geometry, source) if source is not None else None
    on_source = array is not None
    if on_source:
        affine, code = source.affine, source.code
    else:
        array, affine, code = np.asarray(labels_kji).transpose(2, 1, 0), geometry.ijk_to_ras, 1
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 255:
        array = array.astype(np.uint8)
    image = nibabel.Nifti1Image(np.ascontiguousarray(array), affine)
    image.set_qform(affine, code=int(code))
    image.set_sform(affine, code=int(code))
    image.header.set_xyzt_units("mm", "sec")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # Written beside the target under a unique hidden name, then renamed over it: a failed write
    # leaves no half file. nibabel creates it as any new file (the user's umask applies; mkstemp
    # would make it private, and changing the process-wide umask to read it is not thread-safe).
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}"
                                     + (".nii.gz" if path.endswith(".gz") else ".nii"))
    try:
        nibabel.save(image, temporary)
        os.replace(temporary, path)
    except Exception as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise OSError(f"Could not write label map to '{path}': {error}") from error
    return on_source


@contextmanager
def quiet_vtk() -> Iterator[None]:
    """Silence VTK's (and the ITK readers' relayed) error and warning output for a while.

    Slicer's reader reports a file it cannot read with about 100 lines of pipeline errors;
    the caller reports the failure itself, in one sentence naming the file.
    """
    from vtkmodules.vtkCommonCore import vtkObject

    before = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(before)
