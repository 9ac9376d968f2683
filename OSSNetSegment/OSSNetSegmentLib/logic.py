"""The batch API: segment brain MRI with OSS-Net at the resolution the user picks, get a segmentation node back.

    from OSSNetSegmentLib.logic import OSSNetSegmentLogic
    result = OSSNetSegmentLogic().segment([flairNode, t1cNode], resolution=2.0)  # or OSSNetSettings(resolution=2.0)
    print(result.segmentation.GetName(), result.decoded_fraction, result.seconds)

Used by the panel, the headless CLI and Slicer's Python console alike, on any MRML scene. As
in Med-NCA a run has three phases so that the panel can keep Slicer responsive: ``prepare``
reads the scene (main thread), ``compute`` runs the model on plain arrays (any thread),
``finish`` writes the result (main thread); ``segment`` does all three, blocking. A cancelled
or failed run leaves the scene as it was, and the input volumes are never modified.

Grids: the inputs are brought onto the first input's grid (the second is resampled there if
its grid differs, with a note in the result). The model reads its input in its training data's
voxel order (the registry entry's ``orientation``, LPS for BraTS): an input whose axes are the
patient axes (any order, any flips) is re-indexed into it, so the same scan stored LPS or RAS
gives the same result; an oblique one is resampled onto an axis-aligned grid first. The output
grid covers the same box (the ROI's, if one is given) at the chosen spacing, so the
segmentation lives on a grid finer or coarser than the input when the user asks for one.
"""

from __future__ import annotations

import dataclasses
import time
from itertools import zip_longest
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.errors import InputVolumeError, describe_node
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import KJISlices, crop_to_roi
from EfficientSegmentationCommon.input_files import check_source_files
from EfficientSegmentationCommon.input_checks import (background_value, check_inputs, empty_result_warning,
                                                      foreground_mask, voxel_size_text)
from EfficientSegmentationCommon.model_choice import RegistryLogic
from EfficientSegmentationCommon.progress import CancelRequest, ProgressCallback, SceneTransaction, scaled
from EfficientSegmentationCommon.registry import ModelEntry
from EfficientSegmentationCommon.resampling import resample, same_voxel_centres
from EfficientSegmentationCommon.segmentation_output import write_labels_to_segmentation
from EfficientSegmentationCommon.settings import settings_from_keywords
from EfficientSegmentationCommon.torch_setup import check_device
from EfficientSegmentationCommon.volume_arrays import array_from_volume

from .input_names import is_input
from .resolution import OutputGridPlan, plan_output_grid
from .settings import OSSNetSettings

ATTRIBUTE_PREFIX = "OSSNet."
# A second input whose grid holds less than this share of the first input's brain is a mistake,
# not a registration detail: most of the brain would have no second sequence. Below
# FULL_COVERAGE the model still runs, with a warning: where the T1c does not reach it sees none.
# Measured on the brain, not the box: a T1c cropped to its brain covers less than half of the
# FLAIR's 240 x 240 x 155 box and was refused (a fresh-user trial).
MIN_BRAIN_COVERAGE = 0.5
FULL_COVERAGE = 0.99
# An output grid whose coarsest axis is over twice its finest (a thick-slice FLAIR's) gets a note
# that an isotropic output can be asked for.
ANISOTROPIC_RATIO = 2.0


@dataclass
class OSSNetJob:
    """One run's inputs, read from the scene: plain arrays and settings, safe to hand to a thread."""

    input_volumes: list
    entry: ModelEntry
    settings: OSSNetSettings
    images: list[np.ndarray]  # raw intensities on the first input's whole grid, in the model's input order
    crop: KJISlices | None  # the ROI's voxel box on that grid
    input_grid: VolumeGeometry  # the first input's grid, or its ROI box
    plan: OutputGridPlan  # the grid the model reads and the output grid
    output_segmentation: object | None
    warnings: list[str] = field(default_factory=list)  # warnings about the input (its files, its content)
    # What was done to the input to read it (resampling), shown with the result; not a warning.
    details: list[str] = field(default_factory=list)


@dataclass
class OSSNetComputed:
    """The model's answer on the output grid."""

    labels: np.ndarray  # uint8 KJI, 1 = the model's first segment
    geometry: VolumeGeometry
    decoded_fraction: float
    decoded_points: int
    seconds: float


@dataclass
class OSSNetResult:
    """What one run produced: the segmentation node, how much was decoded, the time, warnings
    (anything that questions the result: the commands report it as CHECK, the panel in red) and
    details (what was done to the input to read it)."""

    segmentation: object
    geometry: VolumeGeometry  # the output grid the segmentation lives on
    labels: np.ndarray  # the same labels as a KJI array on ``geometry`` (for saving, metrics)
    decoded_fraction: float  # output voxels decoded by the network / output voxels
    decoded_points: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # e.g. "The T1c volume ... is stored on another grid: ..."


def brain_coverage(image: np.ndarray, geometry: VolumeGeometry, other: VolumeGeometry) -> float:
    """Share (0-1) of the brain of ``image`` (KJI array on ``geometry``; its ``foreground_mask``,
    or every voxel when it has no background) whose voxel centres lie inside the grid ``other``.
    Every second voxel along each axis is taken: a share, not a count."""
    mask = foreground_mask(image)[::2, ::2, ::2]
    if not mask.any():
        mask = np.ones_like(mask)
    kji = np.argwhere(mask) * 2
    ijk = other.ras_to_voxel(geometry.voxel_to_ras(kji[:, ::-1]))
    inside = np.all((ijk >= -0.5) & (ijk <= np.array(other.shape_ijk) - 0.5), axis=1)
    return float(inside.mean())


class OSSNetSegmentLogic(RegistryLogic):
    """Segments volumes with an OSS-Net model from the registry (or a model file of the user's).

    Loaded models are cached per file and device, so segmenting many volumes loads once.
    """

    METHOD = "ossnet"
    METHOD_TITLE = "OSS-Net"

    @staticmethod
    def _load_network(path: Path, device: str):
        from .model_io import load_model  # imports torch

        return load_model(path, device)[0]

    def segment(self, inputVolumes, settings: OSSNetSettings | None = None, roi=None, outputSegmentation=None,
                progressCallback: ProgressCallback | None = None, cancelRequest: CancelRequest | None = None,
                **options) -> OSSNetResult:
        """Segment and return the result; blocking, no dialogs.

        Args:
            inputVolumes: the volume nodes the model takes, in the order its card lists (for the
                brain-tumour model FLAIR, then contrast T1; skull-stripped).
            settings: how to segment (``OSSNetSettings``): the output resolution (a factor of
                the input's) or spacing (mm), the points decoded at once (bounds the memory,
                whatever the resolution), the model and the device.
            roi: a markups ROI node: only its box is segmented.
            outputSegmentation: a segmentation node to overwrite (default: a new one).
            progressCallback: ``(fraction, message)``; raising in it stops the run.
            cancelRequest: ``cancel()`` it from another thread to stop the run with ``CancelledError``.
            options: any setting as a keyword, in camelCase or as the field name, applied over
                ``settings``: ``model``, ``resolution``, ``outputSpacing``, ``chunkSize``, ``device``.

        Raises:
            InputVolumeError: an input is missing or cannot be segmented (the message says which).
            ModelError: the model is unknown, missing or damaged.
            TypeError / ValueError: an unknown option, an invalid value, or an output grid too large.
            CancelledError: the run was cancelled; the scene is as it was.
        """
        settings = settings_from_keywords(OSSNetSettings, settings, **options)
        job = self.prepare(inputVolumes, settings, roi, outputSegmentation)
        computed = self.compute(job, scaled(progressCallback, 0.0, 0.9), cancelRequest)
        return self.finish(job, computed, scaled(progressCallback, 0.9, 1.0), cancelRequest)

    def prepare(self, inputVolumes, settings: OSSNetSettings | None = None, roi=None,
                outputSegmentation=None) -> OSSNetJob:
        """Check the inputs and copy what the computation needs out of the scene (main thread)."""
        settings = settings if settings is not None else OSSNetSettings()
        settings = dataclasses.replace(settings, device=check_device(settings.device))
        entry = self.model_entry(settings.model)
        volumes = [inputVolumes] if not isinstance(inputVolumes, (list, tuple)) else list(inputVolumes)
        self._check_count(volumes, entry)
        arrays = [array_from_volume(volume) for volume in volumes]  # checks each: 3D, scalar, finite
        warnings = check_source_files(volumes)  # damaged files, transforms, one file twice
        # content: no label map or constant volume, the card's requirements, FLAIR and T1c in order, one brain
        warnings += check_inputs([image for image, _ in arrays], [geometry for _, geometry in arrays],
                              [volume.GetName() for volume in volumes], entry.inputs, entry.input_requirements,
                              named_as=is_input, max_spacing_mm=entry.max_spacing_mm)
        reference_image, reference = arrays[0]
        images = [reference_image]
        details = []
        for volume, (image, geometry), name in zip(volumes[1:], arrays[1:], entry.inputs[1:], strict=True):
            if not geometry.matches(reference, atol=1e-4):
                coverage = brain_coverage(reference_image, reference, geometry)
                covering = (f"The {name} volume {describe_node(volume)} covers {coverage:.0%} of the brain in the "
                            f"{entry.inputs[0]} volume {describe_node(volumes[0])}")
                if coverage < MIN_BRAIN_COVERAGE:
                    raise InputVolumeError(
                        f"{covering}: too little, as the model needs both sequences across the brain. Select a "
                        f"{name} scan of the same patient that covers the whole brain, or register the two first.")
                if coverage < FULL_COVERAGE:
                    warnings.append(f"{covering}: where it does not reach, the model sees no {name}, and tumour "
                                    f"there may be missed. Give a {name} scan that covers the whole brain.")
                how = ("its voxels were copied (no interpolation)" if same_voxel_centres(geometry, reference)
                       else "it was resampled (linear interpolation)")
                image = resample(image, geometry, reference, order=1, fill=background_value(image))
                details.append(f"The {name} volume {describe_node(volume)} is stored on another grid: {how} onto "
                               f"the grid of {describe_node(volumes[0])}.")
            images.append(image)
        del arrays
        crop = None
        if roi is not None:
            crop, reference = crop_to_roi(reference, roi)
        plan = plan_output_grid(reference, len(entry.inputs), settings, entry.orientation)
        plan.check()
        if plan.resampled:
            details.append("The input is oblique; it was resampled onto an axis-aligned grid.")
        spacing = plan.output.spacing
        if settings.output_spacing is None and max(spacing) > ANISOTROPIC_RATIO * min(spacing):
            grid = f"the {entry.inputs[0]}'s" + (f" at {settings.resolution:g}x its resolution"
                                                 if settings.resolution != 1 else "")
            details.append(f"The segmentation lies on a grid of {voxel_size_text(plan.output)} mm voxels ({grid}); "
                           f"OSS-Net can decode any point, so for {min(spacing):.4g} mm "
                           f"along every axis ask for that output spacing (ossnet-segment --output-spacing "
                           f"{min(spacing):.4g}; output_spacing={min(spacing):.4g} in Python).")
        return OSSNetJob(volumes, entry, settings, images, crop, reference, plan, outputSegmentation, warnings, details)

    @staticmethod
    def _check_count(volumes: list, entry: ModelEntry) -> None:
        expected = list(entry.inputs)
        if len(volumes) > len(expected):
            raise InputVolumeError(f"Model '{entry.id}' takes {len(expected)} input volumes "
                                   f"({', '.join(expected)}); {len(volumes)} were given.")
        missing = [name for name, volume in zip_longest(expected, volumes) if volume is None]
        if missing:
                raise InputVolumeError(f"Model '{entry.id}' needs {', '.join(expected)}; missing: {', '.join(missing)}. "
                                   "Select a volume for each input.")

    def compute(self, job: OSSNetJob, progressCallback: ProgressCallback | None = None,
                cancelRequest: CancelRequest | None = None) -> OSSNetComputed:
        """Run the model on the job's arrays; touches no MRML, so it may run in a worker thread."""
        from .inference import segment
        from .preprocessing import BACKGROUND, normalize_images

        started = time.perf_counter()
        report = progressCallback or (lambda fraction, message: None)
        cancel = cancelRequest or CancelRequest()
        cancel.raise_if_set()
        report(0.0, f"Loading model {job.entry.title}")
        network = self.load(job.entry, job.settings.device)
        # Intensities are normalised over the whole scan, before cropping to the ROI: a box full of
        # tumour, normalised on its own, would look like normal tissue to the model.
        volume = normalize_images(job.images)
        if job.crop is not None:
            volume = volume[(slice(None), *job.crop)]
        model_grid = job.plan.model_grid
        if model_grid != job.input_grid:  # another voxel order (re-indexed) or oblique (interpolated)
            volume = [resample(channel, job.input_grid, model_grid, order=1, fill=BACKGROUND) for channel in volume]
        result = segment(network, list(volume), model_grid.spacing, output_spacing=job.plan.output.spacing,
                         chunk_size=job.settings.chunk_size, progress=scaled(report, 0.02, 1.0),
                         cancel=lambda: cancel.is_set, normalized=True)
        geometry = job.plan.output
        return OSSNetComputed(result.labels, geometry, result.decoded_fraction, result.decoded_points,
                              time.perf_counter() - started)

    def finish(self, job: OSSNetJob, computed: OSSNetComputed, progressCallback: ProgressCallback | None = None,
               cancelRequest: CancelRequest | None = None) -> OSSNetResult:
        """Write the segmentation into the scene, all or nothing (main thread)."""
        report = progressCallback or (lambda fraction, message: None)
        cancel = cancelRequest or CancelRequest()
        report(0.0, "Writing segmentation")
        reference = job.input_volumes[0]
        output = job.output_segmentation
        # The last progress report is made inside the transaction: if the caller's callback raises
        # there, the run fails with the scene as it was, never after changing it (issue 16.5).
        with SceneTransaction(self.scene, protect=[output] if output is not None else []):
            name = output.GetName() if output is not None else f"{reference.GetName()} OSS-Net"
            node = write_labels_to_segmentation(self.scene, computed.labels, computed.geometry, reference,
                                                job.entry.segments, output=output, name=name,
                                                closed_surface=self.closed_surface)
            spacing = " ".join(f"{s:.4g}" for s in computed.geometry.spacing)
            for key, value in (("Model", job.entry.id), ("DecodedFraction", f"{computed.decoded_fraction:.5f}"),
                               ("DecodedPoints", str(computed.decoded_points)),
                               ("Seconds", f"{computed.seconds:.2f}"), ("OutputSpacing", spacing)):
                node.SetAttribute(ATTRIBUTE_PREFIX + key, value)
            warnings = list(job.warnings)
            empty = empty_result_warning(computed.labels, [spec.name for spec in job.entry.segments],
                                         [volume.GetName() for volume in job.input_volumes])
            if empty:
                warnings.append(empty)
            cancel.raise_if_set()
            report(1.0, "Done")
        return OSSNetResult(node, computed.geometry, computed.labels, computed.decoded_fraction,
                            computed.decoded_points, computed.seconds, warnings, list(job.details))
