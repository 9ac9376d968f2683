"""Med-NCA algorithm: the neural cellular automaton, its training and inference.

Nothing here imports Slicer, so the same code trains on a plain Python install and runs
inside Slicer. Importing the package does not import torch: the modules that need it
(`nca`, `inference`, `training`) are imported by name when they are used.
"""
