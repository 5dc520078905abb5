"""Datasets over the frame and flow stores, augmentation, training loops and evaluation."""
