"""``efficientseg-labels2seg``: turn an image and its label map into a Slicer segmentation file.

It runs the same path a model's result takes (label map -> segmentation node -> ``.seg.nrrd``),
headless, on real data, and checks that the segmentation exports back to the same label map.
That proves the glue end to end before any model is involved.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from .errors import InputVolumeError
from .geometry import VolumeGeometry
from .registry import ModelRegistry
from .scene import create_scene, load_volume
from .segmentation_output import (
    SegmentSpec,
    export_segmentation_labels,
    save_segmentation,
    write_labels_to_segmentation,
)
from .volume_arrays import array_from_volume, check_scalar_volume



def hippocampus_segments() -> tuple[SegmentSpec, ...]:
    """Label table of the Medical Segmentation Decathlon Task04 (1 hippocampus head, 2 body and
    tail) as the registry names and colours it: the segments of the first Med-NCA model, so
    that names and colours have one source."""
    entry = next(entry for entry in ModelRegistry.default().entries if entry.method == "mednca")
    return entry.segments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="efficientseg-labels2seg",
        description="Write an image's label map (MSD Task04 hippocampus labels) as a Slicer .seg.nrrd file.",
    )
    parser.add_argument("image", help="image volume (.nii.gz, .nrrd, ...)")
    parser.add_argument("labels", help="label map on the same grid (0 background, 1 anterior, 2 posterior)")
    parser.add_argument("--output-dir", default="out", help="folder for <name>.seg.nrrd (default: out)")
    args = parser.parse_args(argv)

    try:
        scene = create_scene()
        volume = load_volume(scene, args.image)
        labels_node = load_volume(scene, args.labels)
        check_scalar_volume(volume)
        geometry = VolumeGeometry.from_volume_node(volume)
        labels, label_geometry = array_from_volume(labels_node)
        scene.RemoveNode(labels_node)  # only its voxels are needed
        if label_geometry.shape_kji != geometry.shape_kji or not np.allclose(
            label_geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-4
        ):
            raise InputVolumeError(f"Label map '{args.labels}' is not on the grid of image '{args.image}'.")
        labels = labels.astype(np.int32)
        segments = hippocampus_segments()
        segmentation = write_labels_to_segmentation(scene, labels, geometry, volume, segments)
    except (InputVolumeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"{volume.GetName()}.seg.nrrd")
    save_segmentation(segmentation, path)

    exported = export_segmentation_labels(scene, segmentation, volume, segments)
    voxel_volume = float(np.prod(geometry.spacing))
    print(f"Wrote {path}")
    print(f"  reference volume: {volume.GetName()}, {'x'.join(map(str, geometry.shape_ijk))} voxels, "
          f"spacing {' x '.join(f'{s:g}' for s in geometry.spacing)} mm")
    for spec in segments:
        count = int(np.count_nonzero(labels == spec.label_value))
        color = ", ".join(f"{c:.2f}" for c in spec.color)
        print(f"  segment '{spec.name}' (label {spec.label_value}, colour {color}): "
              f"{count} voxels, {count * voxel_volume / 1000:.2f} ml")
    print(f"  round trip segmentation -> label map identical: {bool(np.array_equal(exported, labels))}")
    return 0 if np.array_equal(exported, labels) else 1


if __name__ == "__main__":
    sys.exit(main())
