"""The batch API: segment a volume node with Med-NCA and get a segmentation node back.

    from MedNCASegmentLib.logic import MedNCASegmentLogic
    from MedNCASegmentLib.settings import MedNCASettings
    result = MedNCASegmentLogic().segment(volumeNode, MedNCASettings(runs=10))  # or segment(volumeNode, runs=10)
    print(result.segmentation.GetName(), result.quality)

On a whole head (``MedNCASettings.mode`` "head", or "auto" with a field of view of 80 mm or more)
both hippocampi are located by registration to the MNI152 template and each is segmented in its
box (``wholehead``); the result has left and right segments, their volumes and the boxes as
markups ROI nodes, which the user may adjust and pass back as ``boxes``.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.errors import ModelError, describe_node
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import KJISlices, axis_aligned_grid, crop_to_roi, is_axial, paste
from EfficientSegmentationCommon.input_files import check_source_files
from EfficientSegmentationCommon.input_checks import check_inputs, empty_result_warning, voxel_size_text
from EfficientSegmentationCommon.model_choice import RegistryLogic
from EfficientSegmentationCommon.progress import CancelRequest, ProgressCallback, SceneTransaction, scaled
from EfficientSegmentationCommon.registry import ModelEntry
from EfficientSegmentationCommon.resampling import resample, same_voxel_centres
from EfficientSegmentationCommon.segmentation_output import write_labels_to_segmentation, write_scalar_volume
from EfficientSegmentationCommon.settings import settings_from_keywords
from EfficientSegmentationCommon.torch_setup import check_device
from EfficientSegmentationCommon.volume_arrays import array_from_volume

from .box_nodes import box_from_roi, box_to_roi
from .localization import (CROP_MODE_MAX_EXTENT_MM, SIDES, HippocampusBox, Localization, choose_mode,
                           template_path)
from .preprocessing import normalize_intensity
from .settings import MedNCASettings
from .wholehead import HeadResult, HippocampusVolumes, measure_volumes

QUALITY_ATTRIBUTE = "MedNCA.QualityScore"
STRUCTURE_SPREAD_ATTRIBUTE = "MedNCA.StructureSpread"
# Node attributes holding the volumes (mm^3) and the asymmetry index (%): "<prefix>.<column>",
# the columns of ``HippocampusVolumes.table``.
VOLUME_ATTRIBUTE = "MedNCA.Volume"
# Receives the current hard labels (KJI uint8, on the input volume's full grid, the model card's
# label values) while the automaton runs; called from the thread that runs ``compute``.
PreviewCallback = Callable[[np.ndarray], None]
# At most one preview every this many seconds, smooth enough to watch the automaton grow; and
# previews skipped while they have taken more than this share of the run's time so far, so that on
# a busy machine (where every second holds less of the run) they still cost the run little
# (Testing/Benchmarks/preview_benchmark.py measures the cost).
PREVIEW_INTERVAL_S = 0.5
PREVIEW_SHARE = 0.03
# The automaton offers its labels every this many steps (of 40 per stage pair with the shipped
# model): making them costs the run even when the relay drops them (every 4 steps, with 5% shares
# for relay and panel, took 1.22x a plain run's CPU time on the shared machine;
# Testing/Benchmarks/RESULTS.md).
PREVIEW_EVERY_STEPS = 8


@dataclass
class MedNCAJob:
    """One run's inputs, read from the scene: plain arrays and settings, safe to hand to a thread."""

    input_volume: object
    entry: ModelEntry
    settings: MedNCASettings
    image: np.ndarray  # KJI, on ``geometry`` (the input or its ROI crop); normalised, raw in head mode
    geometry: VolumeGeometry
    full_geometry: VolumeGeometry
    crop: KJISlices | None
    output_segmentation: object | None
    warnings: list[str] = field(default_factory=list)  # warnings about the input (its file, its content), for the result
    mode: str = "crop"  # "crop" (one hippocampus) or "head" (both, in their boxes)
    boxes: dict[str, HippocampusBox] | None = None  # head mode: the boxes the user placed (else located)
    box_nodes: dict[str, object] | None = None  # their ROI nodes
    # What is done to the input to read it (resampling onto the model's grid), shown with the
    # result; not a warning.
    details: list[str] = field(default_factory=list)


@dataclass
class MedNCAComputed:
    """The model's answer on the job's grid: hard labels, summed spread (when the uncertainty
    volume is asked for), NQM per class and the spread inside each structure."""

    labels: np.ndarray
    spread: np.ndarray | None
    quality: np.ndarray  # per segment, in the order of the segments written (head mode: both sides')
    seconds: float
    head: HeadResult | None = None
    # ``inference.structure_spread`` per structure: crop mode {"structure": ...}, head mode {"left": ..., "right": ...}
    structure_spread: dict[str, float | None] = field(default_factory=dict)


@dataclass
class MedNCAResult:
    """What one run produced: the segmentation node (and its labels), NQM per segment name, the
    spread inside each structure, optional uncertainty volume."""

    segmentation: object
    labels: np.ndarray  # the segmentation as a KJI label map (the model card's label values) on ``geometry``
    geometry: VolumeGeometry  # the input volume's grid
    quality: dict[str, float | None]  # None for each segment after one run: no spread, no score
    uncertainty: object | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    quality_warning_threshold: float | None = None
    mode: str = "crop"  # "crop" (one hippocampus) or "head" (both)
    volumes: HippocampusVolumes | None = None  # mm^3 per segment (and side), from ``labels``
    boxes: dict[str, object] = field(default_factory=dict)  # head mode: ROI node per side
    localization: Localization | None = None  # head mode, when the boxes were located
    # ``inference.structure_spread`` per structure (crop mode: "structure"; head mode: "left",
    # "right"); None after one run or for an empty structure.
    structure_spread: dict[str, float | None] = field(default_factory=dict)
    structure_spread_warning_threshold: float | None = None
    # (low, high) mm^3 per segment name, from the registry (``SegmentSpec.plausible_mm3``)
    plausible_volumes_mm3: dict[str, tuple[float, float]] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # e.g. "The input ... was resampled ..." (``MedNCAJob.details``)

    @property
    def nqm_warning_threshold(self) -> float | None:
        """The NQM threshold this result is judged by: the model's only when it has no threshold
        for the spread inside the structure (a model of the user's), else None: NQM is shown but
        does not warn (see :attr:`failure_signals`)."""
        return nqm_warning_threshold(self.quality_warning_threshold, self.structure_spread_warning_threshold)

    @property
    def failure_signals(self) -> list[str]:
        """The quality signals above the model's warning thresholds, as phrases for a message
        (:func:`failure_signals`, which says why NQM does not warn when the spread can)."""
        return failure_signals(self.quality, self.structure_spread,
                               self.volumes.segments_mm3 if self.volumes is not None else None,
                               self.quality_warning_threshold, self.structure_spread_warning_threshold,
                               self.plausible_volumes_mm3)

    @property
    def likely_failure(self) -> bool:
        """True when the spread inside any structure exceeds its warning threshold (NQM of a
        segment, for a model without that threshold), a scored structure is empty, or a segment's
        volume is implausible (see :attr:`failure_signals`)."""
        return bool(self.failure_signals)


def nqm_warning_threshold(quality_threshold: float | None, spread_threshold: float | None) -> float | None:
    """The NQM threshold a result is judged by: the model's ``quality_threshold`` only when it
    has no ``spread_threshold`` (a model of the user's), else None (see :func:`failure_signals`)."""
    return quality_threshold if spread_threshold is None else None


def failure_signals(quality: Mapping[str, float | None], structure_spread: Mapping[str, float | None],
                    segments_mm3: Mapping[str, float] | None, quality_threshold: float | None,
                    spread_threshold: float | None,
                    plausible_mm3: Mapping[str, tuple[float, float]] | None = None) -> list[str]:
    """Why a result is likely wrong, as phrases for a message (empty: no signal); the one rule
    the logic, the panel, the commands and the robustness benchmark judge results by.

    Args:
        quality: NQM per segment name; None per segment after one run (no score).
        structure_spread: ``inference.structure_spread`` per structure ("structure" in crop
            mode, "left"/"right" on a whole head); None for an empty structure.
        segments_mm3: volume per segment name (head mode: "left ..."/"right ..."), or None.
        quality_threshold, spread_threshold: the model's (registry) thresholds, or None.
        plausible_mm3: (low, high) mm^3 per segment name (registry ``plausibleVolumeMm3``), or None.

    Signals: the spread inside a structure above ``spread_threshold``; NQM above
    ``quality_threshold`` only for a model without a spread threshold; with a score (2 or more
    runs), a structure, or a part of one, with nothing segmented; with or without a score, a
    segmented part outside its plausible volume. The shipped ranges are half the smallest and
    twice the largest training label (anterior 527-5186, posterior 496-4338 mm^3): on the
    robustness benchmark's 798 results they flag 18, all failures (Dice below 0.72, all also
    flagged by the spread), and they catch what the runs can agree on wrongly or after one run
    (a fresh-user trial: 98% of a crop labelled with a low spread; a 1 mm^3 part).

    Why NQM does not warn when the spread can: on the robustness benchmark's 798 clean and
    corrupted validation results, NQM at its threshold flagged no failure (Dice < 0.8) that
    the spread missed, for the shipped and the previous weights alike, and only added false
    alarms (``Testing/Benchmarks/RESULTS.md``). And NQM divides the runs' spread over the
    whole field of view by the segmented mass, so it depends on the box: its threshold was
    chosen on tight validation crops, and the MNI152 template's left hippocampus got a
    posterior NQM of 0.19 (threshold 0.173) both in a head box and in the README's ROI box,
    with a plausible segmentation and a spread inside the structure of 0.044-0.047
    (threshold 0.0548). The spread is measured inside the structure, so the same
    segmentation is judged the same in crop, ROI and head mode.
    """
    signals = []
    scored = any(score is not None for score in quality.values())
    empty = [name for name, value in structure_spread.items() if value is None] if scored else []
    # An empty structure was counted as flagged when the spread threshold was chosen
    # (robustness_benchmark.py); an empty part (anterior or posterior) of a segmented one is
    # named too: every hippocampus has both, so the result is incomplete.
    where = [name for name in empty if name != "structure"]
    if scored and segments_mm3 is not None and "structure" not in empty:
        where += _empty_parts(segments_mm3, empty)
    if empty or where:
        signals.append("nothing segmented" + (f" ({', '.join(where)})" if where else ""))
    for scores, threshold, what in ((quality, nqm_warning_threshold(quality_threshold, spread_threshold), "NQM"),
                                    (structure_spread, spread_threshold,
                                     "spread inside the structure")):
        high = [name for name, score in scores.items()
                if threshold is not None and score is not None and score > threshold]
        where = [name for name in high if name != "structure"]  # crop mode's one structure needs no name
        if high:
            signals.append(f"{what} above {threshold:g}" + (f" ({', '.join(where)})" if where else ""))
    implausible = []
    for name, mm3 in (segments_mm3 or {}).items():
        low, high = (plausible_mm3 or {}).get(name, (0.0, float("inf")))
        if mm3 and not low <= mm3 <= high:  # an empty part is "nothing segmented" above
            implausible.append(f"{name} {mm3:.0f} mm3, plausible {low:g} to {high:g}")
    if implausible:
        signals.append(f"implausible volume ({'; '.join(implausible)})")
    return signals


def _empty_parts(segments_mm3: Mapping[str, float], empty_sides: Sequence[str]) -> list[str]:
    """The segments with nothing segmented, but for those of an empty side ("left"/"right" of a
    whole head), which is named as a whole."""
    return [name for name, mm3 in segments_mm3.items()
            if not mm3 and not any(name.startswith(f"{side} ") for side in empty_sides)]


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
                boxes=None, previewCallback: PreviewCallback | None = None, **options) -> MedNCAResult:
        """Segment ``inputVolume`` and return the result; blocking, no dialogs.

        Args:
            inputVolume: a scalar volume node (T1 MRI).
            settings: how to segment (``MedNCASettings``); default: the model card's.
            roi: a markups ROI node around one hippocampus: only its box is segmented (the
                single-structure path, whatever the mode); the result lies in the input's full geometry.
            outputSegmentation: a segmentation node to overwrite (default: a new one).
            progressCallback: ``(fraction, message)``, called often; raising in it stops the run.
            cancelRequest: ``cancel()`` it from another thread to stop the run at its next step
                with ``CancelledError``.
            boxes: head mode with the boxes as the user placed them: ROI nodes of the left and
                right hippocampus (a pair, or a mapping "left"/"right" to nodes, e.g. a previous
                result's ``boxes``); no localisation then.
            previewCallback: receives the current labels while the automaton runs (see
                ``compute``; crop path only); the last call gets the result's labels.
            options: any setting as a keyword, in camelCase or as the field name, applied over
                ``settings``: ``model``, ``globalSteps``, ``refinementSteps``, ``downscale``,
                ``runs``, ``seed``, ``device``, ``keepLargestComponent``, ``uncertaintyVolume``,
                ``mirror``, ``mode``, ``preview`` (see ``MedNCASettings``; ``preview`` only tells the
                panel to show one, the callback is ``previewCallback``).

        Raises:
            InputVolumeError: the volume cannot be segmented (the message says why), e.g. no
                hippocampus could be located in a head (``LocalizationError``; place an ROI).
            ModelError: the model is unknown, missing or damaged.
            TypeError / ValueError: an unknown option or an invalid value.
            CancelledError: the run was cancelled; the scene is as it was.
        """
        settings = settings_from_keywords(MedNCASettings, settings, **options)
        job = self.prepare(inputVolume, settings, roi, outputSegmentation, boxes)
        computed = self.compute(job, scaled(progressCallback, 0.0, 0.9), cancelRequest, previewCallback)
        return self.finish(job, computed, scaled(progressCallback, 0.9, 1.0), cancelRequest)

    def prepare(self, inputVolume, settings: MedNCASettings | None = None, roi=None,
                outputSegmentation=None, boxes=None) -> MedNCAJob:
        """Check the inputs and copy what the computation needs out of the scene (main thread).

        The path: ``roi`` given: crop (one hippocampus in it); ``boxes`` given: head; else
        ``settings.mode``, where "auto" decides by the field of view
        (``localization.choose_mode``).
        """
        settings = settings if settings is not None else MedNCASettings()
        settings = dataclasses.replace(settings, device=check_device(settings.device))
        image, full_geometry = array_from_volume(inputVolume)
        warnings = check_source_files([inputVolume])  # the file it was read from: damage, transforms
        entry = self.model_entry(settings.model)
        # Its content (a label map, the card's requirements) and its voxels (thick slices).
        warnings += check_inputs([image], [full_geometry], [inputVolume.GetName()], entry.inputs,
                                 entry.input_requirements, max_spacing_mm=entry.max_spacing_mm)
        if roi is not None:
            crop, geometry = crop_to_roi(full_geometry, roi)
            _check_memory(geometry, entry, inputVolume)
            return MedNCAJob(inputVolume, entry, settings, normalize_intensity(image[crop]), geometry, full_geometry,
                             crop, outputSegmentation, warnings, details=_resampling_details(geometry, entry, inputVolume))
        mode = "head" if boxes is not None else choose_mode(full_geometry, settings.mode)
        if mode == "crop":
            if choose_mode(full_geometry, "auto") == "head":  # crop forced on a head-sized field of view
                extent = " x ".join(f"{e:.0f}" for e in np.subtract(*full_geometry.bounds_ras()[::-1]))
                warnings.append(f"Crop mode on {describe_node(inputVolume)}, whose field of view is {extent} mm: "
                                f"the model segments one hippocampus in a crop under {CROP_MODE_MAX_EXTENT_MM:.0f} "
                                "mm, so on a larger volume the result may be wrong. Use mode auto or head for a "
                                "whole head, or an ROI box around one hippocampus.")
            _check_memory(full_geometry, entry, inputVolume)
            return MedNCAJob(inputVolume, entry, settings, normalize_intensity(image), full_geometry, full_geometry,
                             None, outputSegmentation, warnings,
                             details=_resampling_details(full_geometry, entry, inputVolume))
        if not entry.bilateral_segments:
            raise ModelError(f"Model '{entry.id}' declares no left and right segments (bilateralSegments in its "
                             "registry entry), so it cannot segment a whole head; choose crop mode or an ROI.")
        box_nodes = _side_nodes(boxes) if boxes is not None else None
        placed = {side: box_from_roi(side, node) for side, node in box_nodes.items()} if box_nodes else None
        if placed is None:
            template_path()  # nilearn missing: say so now, before the run starts
        return MedNCAJob(inputVolume, entry, settings, image, full_geometry, full_geometry, None, outputSegmentation,
                         warnings, "head", placed, box_nodes)

    def compute(self, job: MedNCAJob, progressCallback: ProgressCallback | None = None,
                cancelRequest: CancelRequest | None = None,
                previewCallback: PreviewCallback | None = None) -> MedNCAComputed:
        """Run the model on the job's arrays; touches no MRML, so it may run in a worker thread.

        ``previewCallback``, if given, receives the current labels (KJI uint8 on the input
        volume's full grid, zero outside an ROI) at most every :data:`PREVIEW_INTERVAL_S` seconds
        while the automaton runs: slices already finished show their mean over the runs, the
        slices being computed the first run's current state (``inference.segment``'s
        ``preview``). Its last call, after the run, gets exactly the labels the result will
        hold. It is called from this thread: hand the labels over, do not touch MRML in it.
        """
        from .inference import decode_labels, keep_largest_component, segment, structure_spread
        from .input_size import check_size, minimum_size

        started = time.perf_counter()
        report = progressCallback or (lambda fraction, message: None)
        cancel = cancelRequest or CancelRequest()

        def step(fraction: float, message: str) -> None:
            cancel.raise_if_set()
            report(fraction, message)

        step(0.0, f"Loading model {job.entry.title}")
        network = self.load(job.entry, job.settings.device)
        if job.mode == "head":
            return self._compute_head(job, network, scaled(step, 0.02, 1.0), started)
        # The model works on an axis-aligned grid of its training spacing; results come back
        # onto the input grid by linear interpolation of the class probabilities.
        grid = axis_aligned_grid(job.geometry, job.entry.spacing, job.entry.orientation)
        settings, config = job.settings, network.config
        downscale = config.downscale if settings.downscale is None else settings.downscale
        check_size(grid.shape_kji, config.dims, minimum_size(downscale, config.global_kernel, config.refinement_kernel),
                   grid.spacing, describe_node(job.input_volume))
        # Volume-sized arrays are made only where needed and dropped as soon as they are used, so
        # that a run's peak stays near input_size.BYTES_PER_VOXEL.
        same_grid = grid == job.geometry
        model_image = job.image if same_grid else resample(job.image, job.geometry, grid, order=1)
        preview = {} if previewCallback is None else {"preview": self._preview_relay(job, grid, previewCallback),
                                                      "preview_every": PREVIEW_EVERY_STEPS}
        result = segment(network, model_image, normalized=True, progress=scaled(step, 0.02, 0.97),
                         **settings.inference_keywords(), **preview)
        del model_image
        quality = result.quality
        spread = result.std.sum(axis=0)
        mean = result.mean
        del result  # the per-class spread: 8 bytes per voxel
        if not same_grid:
            step(0.97, "Resampling to the input grid")
            mean = _resampled_classes(mean, grid, job.geometry)
            spread = resample(spread, grid, job.geometry, order=1)
        labels = decode_labels(mean)
        del mean
        if settings.keep_largest_component:
            labels = keep_largest_component(labels)
        inside = {"structure": structure_spread(spread, labels)}
        if not settings.uncertainty_volume:
            spread = None
        if previewCallback is not None:
            previewCallback(self._on_full_grid(job, labels))
        step(1.0, "Computed")
        return MedNCAComputed(labels, spread, quality, time.perf_counter() - started, structure_spread=inside)

    def _compute_head(self, job: MedNCAJob, network, progress: ProgressCallback, started: float) -> MedNCAComputed:
        """Both hippocampi: locate (unless the job has boxes), then each side in its box."""
        from .inference import segment
        from .wholehead import segment_head

        settings = job.settings

        def infer(model_image: np.ndarray, side_progress: ProgressCallback):
            return segment(network, model_image, normalized=True, progress=side_progress,
                           **settings.inference_keywords())

        head = segment_head(job.image, job.geometry, job.entry.spacing, len(job.entry.segments), infer,
                            boxes=job.boxes, keep_largest=settings.keep_largest_component,
                            uncertainty=settings.uncertainty_volume, progress=progress,
                            orientation=job.entry.orientation)
        quality = np.concatenate([head.quality[side] for side in SIDES])
        inside = {side: head.structure_spread[side] for side in SIDES}
        progress(1.0, "Computed")
        return MedNCAComputed(head.labels, head.spread, quality, time.perf_counter() - started, head, inside)

    @staticmethod
    def _on_full_grid(job: MedNCAJob, labels: np.ndarray) -> np.ndarray:
        """Labels on the job's grid placed on the input's full grid (zero outside the ROI)."""
        return labels if job.crop is None else paste(labels, job.crop, job.full_geometry.shape_kji)

    def _preview_relay(self, job: MedNCAJob, grid: VolumeGeometry, callback: PreviewCallback) -> Callable:
        """The ``preview`` of ``inference.segment``: labels on the model's grid, brought to the input's
        full grid (nearest voxel) and passed on at most every :data:`PREVIEW_INTERVAL_S` seconds,
        and only while relaying has taken at most :data:`PREVIEW_SHARE` of the time so far."""
        started = time.perf_counter()
        last, spent = [-float("inf")], [0.0]

        def relay(labels: np.ndarray) -> None:
            now = time.perf_counter()
            if now - last[0] < PREVIEW_INTERVAL_S or spent[0] > PREVIEW_SHARE * (now - started):
                return
            last[0] = now
            callback(self._on_full_grid(job, resample(labels, grid, job.geometry, order=0)))
            spent[0] += time.perf_counter() - now
        return relay

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
        head = computed.head
        segments = sorted(job.entry.bilateral_segments if head else job.entry.segments, key=lambda s: s.label_value)
        volumes = measure_volumes(labels, job.full_geometry, segments, len(job.entry.segments) if head else None)
        # The last progress report is made inside the transaction: if the caller's callback raises
        # there, the run fails with the scene as it was, never after changing it (issue 16.5).
        with SceneTransaction(self.scene, protect=protect):
            name = output.GetName() if output is not None else f"{volume.GetName()} Med-NCA"
            node = write_labels_to_segmentation(self.scene, labels, job.full_geometry, volume, segments,
                                                output=output, name=name, closed_surface=self.closed_surface)
            scored = job.settings.runs >= 2  # NQM is the runs' spread: one run has none
            quality = {spec.name: float(q) if scored else None
                       for spec, q in zip(segments, computed.quality, strict=True)}
            inside = {name: value if scored else None for name, value in computed.structure_spread.items()}
            for attribute, scores in ((QUALITY_ATTRIBUTE, quality), (STRUCTURE_SPREAD_ATTRIBUTE, inside)):
                for name, score in scores.items():
                    if score is not None:
                        node.SetAttribute(f"{attribute}.{name}", f"{score:.5f}")
            node.SetAttribute("MedNCA.Model", job.entry.id)
            node.SetAttribute("MedNCA.Runs", str(job.settings.runs))
            node.SetAttribute("MedNCA.Mode", job.mode)
            for column, value in volumes.table().items():
                if value is not None:
                    node.SetAttribute(f"{VOLUME_ATTRIBUTE}.{column}", f"{value:.3f}")
            boxes = {}
            if head is not None:
                boxes = job.box_nodes or {
                    side: box_to_roi(self.scene, box, f"{volume.GetName()} {side} hippocampus box", volume=volume)
                    for side, box in head.boxes.items()}
            uncertainty = None
            if spread is not None:
                uncertainty = write_scalar_volume(self.scene, spread.astype(np.float32), job.full_geometry,
                                                  f"{volume.GetName()} Med-NCA uncertainty")
            result = MedNCAResult(node, labels, job.full_geometry, quality, uncertainty, computed.seconds,
                                  warnings=list(job.warnings),
                                  quality_warning_threshold=job.entry.quality_warning_threshold, mode=job.mode,
                                  volumes=volumes, boxes=boxes, localization=head.localization if head else None,
                                  structure_spread=inside,
                                  structure_spread_warning_threshold=job.entry.structure_spread_warning_threshold,
                                  plausible_volumes_mm3={spec.name: spec.plausible_mm3 for spec in segments
                                                         if spec.plausible_mm3 is not None},
                                  details=list(job.details))
            # One message per finding: with a score, the likely-failure message names an empty
            # structure or part (and says what to do); after one run the emptiness is said alone.
            if result.likely_failure:
                result.warnings.append(
                    f"The segmentation is likely wrong: {'; '.join(result.failure_signals)}. "
                    "Check it. The image may be degraded (motion, noise, blur, thick slices) or not a T1 of the "
                    f"hippocampus; {_failure_advice(job)}")
            if not scored:
                result.warnings.append("One run gives no quality scores (NQM and the spread inside the structure need "
                                       "at least 2 runs), so the runs' spread cannot flag a failed segmentation; use "
                                       "2 or more runs for them.")
                empty = empty_result_warning(labels, [spec.name for spec in segments], [volume.GetName()])
                if empty:
                    result.warnings.append(empty)
                else:
                    result.warnings += _empty_part_warnings(volumes.segments_mm3, job)
            cancel.raise_if_set()
            report(1.0, "Done")
        return result


def _empty_part_warnings(segments_mm3: Mapping[str, float], job: MedNCAJob) -> list[str]:
    """After one run (no score, so no likely-failure message to name them): a warning per empty
    side of a whole head, and one naming the empty parts of a segmented structure (every
    hippocampus has an anterior and a posterior part)."""
    warnings = []
    empty_sides = [side for side in SIDES if job.mode == "head"
                   and not any(mm3 for name, mm3 in segments_mm3.items() if name.startswith(f"{side} "))]
    for side in empty_sides:
        warnings.append(f"Nothing was segmented in the {side} hippocampus box: {_failure_advice(job)}")
    parts = _empty_parts(segments_mm3, empty_sides)
    if parts:
        warnings.append(f"Nothing was segmented as {', '.join(parts)}, though every hippocampus has both parts: "
                        f"the result is incomplete. Check it; {_failure_advice(job)}")
    return warnings


def _failure_advice(job: MedNCAJob) -> str:
    """What may help a likely failure, for the way this job was placed: suggest a box only where
    the user has not drawn one, and to check the ones they (or the localization) placed."""
    if job.mode == "head":
        return ("check that each hippocampus box holds its whole hippocampus (in Slicer, move or resize its ROI "
                "node; with mednca-segment, segment one side in a box given by --roi); more steps can help.")
    if job.crop is not None:
        return "check that the ROI box holds one whole hippocampus with a margin; more steps can help."
    return "an ROI box around one hippocampus (--roi with mednca-segment), or more steps, can help."


def _resampling_details(geometry: VolumeGeometry, entry: ModelEntry, volume) -> list[str]:
    """A note when crop mode interpolates the input (``geometry``: the input or its ROI box): its
    voxels are not the model's (another spacing, or oblique), so it is resampled onto the model's
    axis-aligned grid and the result back. No note when the voxels are only re-indexed (another
    voxel order of the same grid)."""
    model_grid = axis_aligned_grid(geometry, entry.spacing, entry.orientation)
    if same_voxel_centres(geometry, model_grid):
        return []
    oblique = "" if is_axial(geometry) else ", oblique"
    return [f"The input {describe_node(volume)} ({voxel_size_text(geometry)} mm voxels{oblique}) was resampled "
            f"onto the model's axis-aligned grid of {voxel_size_text(model_grid)} mm voxels (linear interpolation), "
            "and the result back onto its grid."]


def _check_memory(geometry: VolumeGeometry, entry: ModelEntry, volume) -> None:
    """Refuse a crop-path run the system lacks the memory for (``input_size.check_memory``)."""
    from .input_size import check_memory

    model_grid = axis_aligned_grid(geometry, entry.spacing, entry.orientation)
    check_memory(max(int(np.prod(geometry.shape_kji)), int(np.prod(model_grid.shape_kji))), describe_node(volume))


def _resampled_classes(mean: np.ndarray, source: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """Per-class probabilities (C, K, J, I) on ``source`` resampled linearly to ``target``, filled
    class by class into one array (no list of resampled classes beside the stacked copy)."""
    out = np.empty((mean.shape[0], *target.shape_kji), np.float32)
    for index, probabilities in enumerate(mean):
        out[index] = resample(probabilities, source, target, order=1)
    return out


def _side_nodes(boxes) -> dict[str, object]:
    """ROI nodes per side from a mapping ("left"/"right" -> node) or a (left, right) pair."""
    if isinstance(boxes, Mapping):
        nodes = {side: boxes.get(side) for side in SIDES}
    elif isinstance(boxes, Sequence) and len(boxes) == len(SIDES):
        nodes = dict(zip(SIDES, boxes, strict=True))
    else:
        raise ValueError("boxes must be the left and right hippocampus ROI nodes: a pair, or a mapping "
                         "'left'/'right' -> node")
    missing = [side for side, node in nodes.items() if node is None]
    if missing:
        raise ValueError(f"boxes: no ROI node for the {' and '.join(missing)} hippocampus")
    return nodes
