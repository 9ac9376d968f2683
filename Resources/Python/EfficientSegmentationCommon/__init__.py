"""Glue shared by the EfficientSegmentation modules (Med-NCA, OSS-Net).

Everything here talks to MRML through ``vtkMRML*`` classes and explicitly constructed
logics, so the same code runs inside 3D Slicer and headless on the ``slicer-core`` wheel.
Submodules are imported on demand: importing this package loads neither torch nor scipy,
which keeps Slicer's module start-up fast.
"""
