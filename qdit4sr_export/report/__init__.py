"""What the tool reports about plans and engine sets: accuracy against FP (``compare``, per-layer errors), sizes,
``inspect`` and its plots, and the image metrics."""
