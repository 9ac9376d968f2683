"""One way to get an MRML scene and the module logics that work on it, in Slicer and headless.

Inside the Slicer application the scene and the logics already exist and are wired to the
application logic. On the ``slicer-core`` wheel nothing is: a bare ``vtkMRMLScene`` has no
application logic, the volumes logic then cannot give new volumes a colour table, and so on.
This module does that wiring once per scene, so the rest of the package (and the tests) can
use the same calls everywhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import slicer

from .errors import InputVolumeError, check_the_path

_IMAGE_SUFFIXES = {".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"}


@dataclass(frozen=True)
class _HeadlessLogics:
    """The logics set up for one headless scene; kept alive as long as the scene is."""

    application: slicer.vtkSlicerApplicationLogic
    colors: slicer.vtkMRMLColorLogic
    volumes: slicer.vtkSlicerVolumesLogic
    segmentations: slicer.vtkSlicerSegmentationsModuleLogic


# Logics hold only raw pointers to the application logic, so something must own it.
_headless_logics: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _application_scene():
    """``slicer.mrmlScene`` when running inside the Slicer application, else None."""
    return getattr(slicer, "mrmlScene", None)


def create_scene():
    """The scene to work in: Slicer's own scene inside the application, else a new headless one.

    A headless scene comes with an application logic, the colour, volumes and segmentations
    logics, and a subject hierarchy node, like the scene of the application at start-up.
    """
    app_scene = _application_scene()
    if app_scene is not None:
        return app_scene
    scene = slicer.vtkMRMLScene()
    _logics_for(scene)
    scene.GetSubjectHierarchyNode()  # created now, not lazily inside someone's transaction
    return scene


def _logics_for(scene) -> _HeadlessLogics:
    """Logics for a headless scene, set up on first use (also for scenes made elsewhere)."""
    logics = _headless_logics.get(scene)
    if logics is not None:
        return logics
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    volumes = slicer.vtkSlicerVolumesLogic()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    for name, logic in (("Colors", colors), ("Volumes", volumes), ("Segmentations", segmentations)):
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
    application.SetColorLogic(colors)
    logics = _HeadlessLogics(application, colors, volumes, segmentations)
    _headless_logics[scene] = logics
    return logics


def remove_node(scene, node) -> None:
    """Remove a result (segmentation or volume node) from ``scene`` with everything that belongs
    to it: its subject hierarchy item, display nodes and storage node.

    On a headless scene ``scene.RemoveNode`` alone leaves the display and storage nodes and the
    subject hierarchy item behind, which a long batch (or the web app's sessions) would pile up.
    Removing a node that is not in the scene does nothing."""
    if node is None or not scene.IsNodePresent(node):
        return
    hierarchy = scene.GetSubjectHierarchyNode()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.RemoveItem(item, False, False)
    attached = []
    if node.IsA("vtkMRMLDisplayableNode"):
        attached += [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        attached += [node.GetNthStorageNode(index) for index in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in attached:
        if other is not None and scene.IsNodePresent(other):
            scene.RemoveNode(other)


def forget_removed_nodes(scene) -> int:
    """Remove the subject hierarchy items whose data node has left ``scene``; returns how many.

    In the application the subject hierarchy plugins remove a node's item with the node; on a
    headless scene a plain ``scene.RemoveNode`` leaves it behind, and a later node created at
    the freed node's address made the hierarchy log "DataNodeCache inconsistency" (issue
    16.7). Called before a result is placed in the hierarchy."""
    import vtk

    hierarchy = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), items, True)
    stale = []
    for index in range(items.GetNumberOfIds()):
        item = items.GetId(index)
        node = hierarchy.GetItemDataNode(item)
        # items of folders, patients and studies have a level and never a data node
        if not hierarchy.GetItemLevel(item) and (node is None or not scene.IsNodePresent(node)):
            stale.append(item)
    for item in stale:
        hierarchy.RemoveItem(item, False, False)
    return len(stale)


def segmentations_logic(scene):
    """The ``vtkSlicerSegmentationsModuleLogic`` that works on ``scene``."""
    if scene is _application_scene():
        return slicer.modules.segmentations.logic()
    return _logics_for(scene).segmentations


def _volumes_logic(scene):
    """The ``vtkSlicerVolumesLogic`` that works on ``scene``."""
    if scene is _application_scene():
        return slicer.modules.volumes.logic()
    return _logics_for(scene).volumes


def load_volume(scene, path: str | os.PathLike, name: str | None = None):
    """Load an image file (NIfTI, NRRD, MetaImage, ...) as a volume node, placed as nibabel and
    FSL place it.

    The file is checked first (``input_files.inspect_file``): a missing, damaged (cut short),
    4D or multi-component file, one with NaN or infinite voxels or without orientation raises
    ``InputVolumeError`` naming the file and the problem, and adds nothing to the scene. A NIfTI
    file whose sform and qform differ is placed by the sform (see ``input_files``); the node
    keeps the voxel order Slicer's reader gives it (the K axis of a left-handed grid reversed),
    and ``input_files.save_labels_nifti`` writes results back onto the file's own grid.
    """
    from .input_files import conform_node, inspect_file, quiet_vtk

    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise InputVolumeError(f"Cannot load volume file '{path}': a folder, not a file. Give the volume "
                                   f"files in it (e.g. {os.path.join(path, '*.nii.gz')}).")
        raise InputVolumeError(f"Cannot load volume file '{path}': no such file. {check_the_path(path)}")
    report = inspect_file(path)
    if report is not None and report.problem:
        raise InputVolumeError(report.problem)
    with quiet_vtk(), _read_alone(path) as readable:
        node = _volumes_logic(scene).AddArchetypeVolume(readable, name or name_from_path(path), 0)
        if node is not None and readable != path:
            node.GetStorageNode().SetFileName(path)
    if node is None:
        raise InputVolumeError(
            f"Cannot load volume file '{path}': it is unreadable, damaged or not an image format Slicer reads."
        )
    if report is not None:
        conform_node(node, report)
    return node


@contextmanager
def _read_alone(path: str) -> Iterator[str]:
    """``path``, or, when a ``x.nii`` would shadow this ``x.nii.gz`` (``input_files.shadowing_file``),
    a link of the same name alone in a private folder, so that Slicer's reader reads the file named."""
    from .input_files import shadowing_file

    if shadowing_file(path) is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="effseg-read-") as folder:
        alone = os.path.join(folder, os.path.basename(path))
        try:
            os.symlink(os.path.abspath(path), alone)
        except OSError:  # no symbolic links (some Windows accounts): a copy
            shutil.copyfile(path, alone)
        yield alone


def name_from_path(path: str) -> str:
    """Node name from a file name without its image extensions (``case.nii.gz`` -> ``case``)."""
    stem = os.path.basename(os.path.normpath(path))  # a folder given with a trailing slash keeps its name
    root, suffix = os.path.splitext(stem)
    while suffix.lower() in _IMAGE_SUFFIXES and root:
        stem = root
        root, suffix = os.path.splitext(stem)
    return stem
