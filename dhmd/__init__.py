"""DHMD - Decoupled Hierarchical Multimodal Distillation for multimodal emotion recognition.

    from dhmd import DHMD, DHMDConfig
    cfg = DHMDConfig(text_dim=768, audio_dim=5, video_dim=20)   # every other field defaults to the paper
    out = DHMD(cfg)(text, audio, video, text_mask=None, audio_mask=None, video_mask=None, labels=None)

The package knows nothing of files or of the pipeline; dhmd/model.py reads top to bottom and assembles
the components (projection, decoupling, crossmodal, graph_distill, dictionary, fusion, losses).
"""
from .config import DHMDConfig
from .model import DHMD, DHMDOutput

__all__ = ["DHMD", "DHMDConfig", "DHMDOutput"]
