"""The web app (``efficientseg-web``): the segmentation models in a browser, on trame-slicer.

``session`` holds one user's work over the modules' logic and panel rules (no web code);
``app`` is the trame page over it. Needs the optional ``[web]`` dependencies.
"""
