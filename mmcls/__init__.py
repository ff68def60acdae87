"""mmcls: multimodal short-video classification (frames + title/ASR/OCR text -> hierarchical category)."""

__version__ = "0.1.0"
