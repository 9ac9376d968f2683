"""OSS-Net algorithm (occupancy networks for segmentation): the network, its training and
coarse-to-fine inference at any output resolution.

Nothing here imports Slicer, so the same code trains on a plain Python install and runs
inside Slicer. Importing the package does not import torch: the modules that need it
(`network`, `preprocessing`, `inference`, `training`, `evaluation`, `model_io`) are imported by
name when they are used.
"""
