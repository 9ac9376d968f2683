"""The batch API: segment a volume node with Med-NCA and get a segmentation node back.

    from MedNCASegmentLib.logic import MedNCASegmentLogic
    from MedNCASegmentLib.settings import MedNCASettings
    result = MedNCASegmentLogic().segment(volumeNode, MedNCASettings(runs=10))  # or segment(volumeNode, runs=10)
    print(result.segmentation.GetName(), result.quality)

Used by the panel, the headless CLI and Slicer's Python console alike, on any MRML scene
(Slicer's own, or a headless slicer-core scene). A run has three phases so that the panel can
keep Slicer responsive: ``prepare`` reads the scene (main thread), ``compute`` runs the model
on plain arrays (any thread), ``finish`` writes the result (main thread). ``segment`` does all
three, blocking. A cancelled or failed run leaves the scene as it was (an output segmentation
being overwritten gets its segments back), and the input volume is never modified.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.errors import describe_node
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import KJISlices, axis_aligned_grid, crop_to_roi, paste
from EfficientSegmentationCommon.input_files import check_source_files
from EfficientSegmentationCommon.input_checks import check_inputs, empty_result_warning
from EfficientSegmentationCommon.model_choice import RegistryLogic
from EfficientSegmentationCommon.progress import CancelRequest, ProgressCallback, SceneTransaction, scaled
from EfficientSegmentationCommon.registry import ModelEntry
from EfficientSegmentationCommon.resampling import resample
from EfficientSegmentationCommon.segmentation_output import write_labels_to_segmentation, write_scalar_volume
from EfficientSegmentationCommon.settings import settings_from_keywords
from EfficientSegmentationCommon.torch_setup import check_device
from EfficientSegmentationCommon.volume_arrays import array_from_volume

from .preprocessing import normalize_intensity
from .settings import MedNCASettings

QUALITY_ATTRIBUTE = "MedNCA.QualityScore"


@dataclass
class MedNCAJob:
    """One run's inputs, read from the scene: plain arrays and settings, safe to hand to a thread."""

    input_volume: object
    entry: ModelEntry
    settings: MedNCASettings
    image: np.ndarray  # normalised, KJI, on ``geometry`` (the input or its ROI crop)
    geometry: VolumeGeometry
    full_geometry: VolumeGeometry
    crop: KJISlices | None
    output_segmentation: object | None
    notes: list[str] = field(default_factory=list)  # warnings about the input (its file, its content), for the result


@dataclass
class MedNCAComputed:
    """The model's answer on the job's grid: hard labels, summed spread, NQM per class."""

    labels: np.ndarray
    spread: np.ndarray
    quality: np.ndarray
    seconds: float


@dataclass
class MedNCAResult:
    """What one run produced: the segmentation node (and its labels), NQM per segment name, optional
    uncertainty volume."""

    segmentation: object
    labels: np.ndarray  # the segmentation as a KJI label map (the model card's label values) on ``geometry``
    geometry: VolumeGeometry  # the input volume's grid
    quality: dict[str, float | None]  # None for each segment after one run: no spread, no score
    uncertainty: object | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    quality_warning_threshold: float | None = None

    @property
    def likely_failure(self) -> bool:
        """True when any segment's quality score exceeds the model's warning threshold, which
        was chosen on its validation split (see the model card)."""
        threshold = self.quality_warning_threshold
        return threshold is not None and any(score is not None and score > threshold for score in self.quality.values())


class MedNCASegmentLogic(RegistryLogic):
    """Segments volumes with a Med-NCA model from the registry (or a model file of the user's).

    Loaded models are cached per file and device, so segmenting many volumes loads once.
    """

    METHOD = "mednca"
    METHOD_TITLE = "Med-NCA"

    @staticmethod
    def _load_network(path: Path, device: str):
        from .model_io import load_model  # imports torch

        return load_model(path, device)[0]

    def segment(self, inputVolume, settings: MedNCASettings | None = None, roi=None, outputSegmentation=None,
                progressCallback: ProgressCallback | None = None, cancelRequest: CancelRequest | None = None,
                **options) -> MedNCAResult:
        """Segment ``inputVolume`` and return the result; blocking, no dialogs.

        Args:
            inputVolume: a scalar volume node (T1 MRI).
            settings: how to segment (``MedNCASettings``); default: the model card's.
            roi: a markups ROI node: only its box is segmented; the result lies in the input's
                full geometry.
            outputSegmentation: a segmentation node to overwrite (default: a new one).
            progressCallback: ``(fraction, message)``, called often; raising in it stops the run.
            cancelRequest: ``cancel()`` it from another thread to stop the run at its next step
                with ``CancelledError``.
            options: any setting as a keyword, in camelCase or as the field name, applied over
                ``settings``: ``model``, ``globalSteps``, ``refinementSteps``, ``downscale``,
                ``runs``, ``seed``, ``device``, ``keepLargestComponent``, ``uncertaintyVolume``
                (see ``MedNCASettings``).

        Raises:
            InputVolumeError: the volume cannot be segmented (the message says why).
            ModelError: the model is unknown, missing or damaged.
            TypeError / ValueError: an unknown option or an invalid value.
            CancelledError: the run was cancelled; the scene is as it was.
        """
        settings = settings_from_keywords(MedNCASettings, settings, **options)
        job = self.prepare(inputVolume, settings, roi, outputSegmentation)
        computed = self.compute(job, scaled(progressCallback, 0.0, 0.9), cancelRequest)
        return self.finish(job, computed, scaled(progressCallback, 0.9, 1.0), cancelRequest)

    def prepare(self, inputVolume, settings: MedNCASettings | None = None, roi=None,
                outputSegmentation=None) -> MedNCAJob:
        """Check the inputs and copy what the computation needs out of the scene (main thread)."""
        settings = settings if settings is not None else MedNCASettings()
        settings = dataclasses.replace(settings, device=check_device(settings.device))
        image, full_geometry = array_from_volume(inputVolume)
        notes = check_source_files([inputVolume])  # the file it was read from: damage, transforms
        entry = self.model_entry(settings.model)
        notes += check_inputs([image], [full_geometry], [inputVolume.GetName()], entry.inputs,
                              entry.input_requirements)  # its content: a label map, the card's requirements
        geometry, crop = full_geometry, None
        if roi is not None:
            crop, geometry = crop_to_roi(full_geometry, roi)
            image = image[crop]
        return MedNCAJob(inputVolume, entry, settings, normalize_intensity(image), geometry, full_geometry, crop,
                         outputSegmentation, notes)

    def compute(self, job: MedNCAJob, progressCallback: ProgressCallback | None = None,
                cancelRequest: CancelRequest | None = None) -> MedNCAComputed:
        """Run the model on the job's arrays; touches no MRML, so it may run in a worker thread."""
        from .inference import decode_labels, keep_largest_component, segment
        from .input_size import check_size, minimum_size

        started = time.perf_counter()
        report = progressCallback or (lambda fraction, message: None)
        cancel = cancelRequest or CancelRequest()

        def step(fraction: float, message: str) -> None:
            cancel.raise_if_set()
            report(fraction, message)

        step(0.0, f"Loading model {job.entry.title}")
        network = self.load(job.entry, job.settings.device)
        # The model works on an axis-aligned grid of its training spacing; results come back
        # onto the input grid by linear interpolation of the class probabilities.
        grid = axis_aligned_grid(job.geometry, job.entry.spacing)
        settings, config = job.settings, network.config
        downscale = config.downscale if settings.downscale is None else settings.downscale
        check_size(grid.shape_kji, config.dims, minimum_size(downscale, config.global_kernel, config.refinement_kernel),
                   grid.spacing, describe_node(job.input_volume))
        model_image = resample(job.image, job.geometry, grid, order=1)
        result = segment(network, model_image, normalized=True, progress=scaled(step, 0.02, 0.97),
                         **settings.inference_keywords())
        step(0.97, "Resampling to the input grid")
        mean = np.stack([resample(m, grid, job.geometry, order=1) for m in result.mean])
        spread = resample(result.std.sum(axis=0), grid, job.geometry, order=1) if settings.uncertainty_volume else None
        labels = decode_labels(mean)
        if settings.keep_largest_component:
            labels = keep_largest_component(labels)
        step(1.0, "Computed")
        return MedNCAComputed(labels, spread, result.quality, time.perf_counter() - started)

    def finish(self, job: MedNCAJob, computed: MedNCAComputed, progressCallback: ProgressCallback | None = None,
               cancelRequest: CancelRequest | None = None) -> MedNCAResult:
        """Write the segmentation (and uncertainty volume) into the scene, all or nothing (main thread)."""
        report = progressCallback or (lambda fraction, message: None)
        cancel = cancelRequest or CancelRequest()
        report(0.0, "Writing segmentation")
        labels, spread = computed.labels, computed.spread
        if job.crop is not None:
            labels = paste(labels, job.crop, job.full_geometry.shape_kji)
            spread = None if spread is None else paste(spread, job.crop, job.full_geometry.shape_kji)
        volume = job.input_volume
        output = job.output_segmentation
        protect = [output] if output is not None else []
        # The last progress report is made inside the transaction: if the caller's callback raises
        # there, the run fails with the scene as it was, never after changing it (issue 16.5).
        with SceneTransaction(self.scene, protect=protect):
            name = output.GetName() if output is not None else f"{volume.GetName()} Med-NCA"
            node = write_labels_to_segmentation(self.scene, labels, job.full_geometry, volume, job.entry.segments,
                                                output=output, name=name)
            scored = job.settings.runs >= 2  # NQM is the runs' spread: one run has none
            quality = {spec.name: float(q) if scored else None
                       for spec, q in zip(job.entry.segments, computed.quality, strict=True)}
            for segment_name, score in quality.items():
                if score is not None:
                    node.SetAttribute(f"{QUALITY_ATTRIBUTE}.{segment_name}", f"{score:.5f}")
            node.SetAttribute("MedNCA.Model", job.entry.id)
            node.SetAttribute("MedNCA.Runs", str(job.settings.runs))
            uncertainty = None
            if spread is not None:
                uncertainty = write_scalar_volume(self.scene, spread.astype(np.float32), job.full_geometry,
                                                  f"{volume.GetName()} Med-NCA uncertainty")
            result = MedNCAResult(node, labels, job.full_geometry, quality, uncertainty, computed.seconds,
                                  warnings=list(job.notes),
                                  quality_warning_threshold=job.entry.quality_warning_threshold)
            if not scored:
                result.warnings.append("One run gives no quality score (NQM needs the spread of at least 2 runs), "
                                       "so a failed segmentation cannot be flagged; use 2 or more runs for a score.")
            if result.likely_failure:
                result.warnings.append(
                    f"High quality score (NQM above {result.quality_warning_threshold}): the segmentation is likely "
                    "wrong. Check it; crop to an ROI around the hippocampus, or raise the number of steps.")
            empty = empty_result_warning(labels, [spec.name for spec in job.entry.segments], volume.GetName())
            if empty:
                result.warnings.append(empty)
            cancel.raise_if_set()
            report(1.0, "Done")
        return result
