"""dhmd-pipeline: raw video clips -> multimodal features -> DHMD -> predictions."""

__version__ = "0.1.0"
