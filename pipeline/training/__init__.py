"""Stage 2, training: cache or MMSA pickle -> dataset -> DHMD -> checkpoints and metrics.

``dataset`` (samples, splits, alignment, normalisation), ``mmsa`` (pickle I/O), ``export``,
``train`` (the loop, seeds, resume), ``checkpoint``, ``presets``, ``evaluate``, ``metrics``,
``plots`` (loss curves, edge matrices).
"""
