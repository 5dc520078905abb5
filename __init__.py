"""actrec: two-stream action recognition, from a folder of videos to fused models."""

__version__ = "0.1.0"
