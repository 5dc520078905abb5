"""Backbones (ResNet, CoTNet) and the two-stream architectures (STILT, CoT-LSTM)."""

from actrec.models.cotlstm import CoTLSTM, CotLstmOutput, cotlstm_loss, cotlstm_reduced
from actrec.models.cotnet import CoTBottleneck, CoTLayer, cotnet50, cotnet101, local_aggregate
from actrec.models.pretrained import (
    LoadReport,
    cross_modality_kernel,
    load_pretrained,
    load_torch_file,
    read_state_dict,
)
from actrec.models.resnet import BackboneBuilder, Bottleneck, ResNet, reduced_backbone, resnet50, resnet101
from actrec.models.stilt import STILT, AlternatingCoAttention, StiltOutput, stilt_loss, stilt_reduced

__all__ = [
    "AlternatingCoAttention",
    "BackboneBuilder",
    "Bottleneck",
    "CoTBottleneck",
    "CoTLSTM",
    "CoTLayer",
    "CotLstmOutput",
    "LoadReport",
    "ResNet",
    "STILT",
    "StiltOutput",
    "cotlstm_loss",
    "cotlstm_reduced",
    "cotnet50",
    "cotnet101",
    "cross_modality_kernel",
    "load_pretrained",
    "load_torch_file",
    "read_state_dict",
    "reduced_backbone",
    "resnet50",
    "resnet101",
    "stilt_loss",
    "stilt_reduced",
]
