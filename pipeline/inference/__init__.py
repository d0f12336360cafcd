"""Stage 3, inference: a checkpoint and new clips -> predictions with explanations.

``predict`` (the predictor and the ``predict`` command), ``explain`` (the per-clip picture).
"""
