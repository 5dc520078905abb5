"""Backbones (ResNet, CoTNet) and the two-stream architectures (STILT, CoT-LSTM)."""
