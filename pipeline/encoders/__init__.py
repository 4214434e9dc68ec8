"""Frozen pre-trained visual representations (PVRs): one module per family, a registry by name."""

from pipeline.encoders.frozen_encoder import FrozenEncoder
from pipeline.encoders.spec import EncoderSpec, encoder_names, get_spec

__all__ = ["EncoderSpec", "FrozenEncoder", "encoder_names", "get_spec"]
