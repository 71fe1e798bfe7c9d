"""AIGC Gateway: per-user AI content engines on shared GPUs, behind one gateway."""

__version__ = "0.1.0"
