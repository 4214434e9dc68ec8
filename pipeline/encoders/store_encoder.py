"""The frozen encoder that built an embedding store, rebuilt to encode new frames as the store did.

Online fine-tuning, evaluation and agents that collect see frames straight from the env; they
must get the features the store holds for the same frames: same PVR and weights (checked by
sha256), same preprocessing, same compute precision, rounded to the store's dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encoders.frozen_encoder import FrozenEncoder
from pipeline.encoders.spec import get_spec
from pipeline.errors import UserError


class StoreEncoder:
    """`encoder(frames)`: (N, H, W, 3) uint8 frames (for `state`: (N, S) states) -> (N, ...) features
    in the store's dtype; `encoder.observe(observations)` picks what it reads from env observations."""

    def __init__(self, attrs: dict[str, Any], weights: Path | None = None, device: str = "cpu"):
        spec = get_spec(attrs["encoder"])
        weights = weights or attrs.get("encode_config", {}).get("weights")
        precision = "bf16" if attrs["compute_precision"] == "bf16-autocast" else "fp32"
        self.encoder = FrozenEncoder(spec, Path(weights) if weights else None, download=False, device=device,
                                     precision=precision)
        if self.encoder.weights_sha256 != attrs["weights_sha256"]:
            raise UserError(f"the {spec.name} weights found ({self.encoder.weights_sha256[:12]}, "
                            f"{self.encoder.weights_source}) are not those that built the store "
                            f"({attrs['weights_sha256'][:12]}, {attrs['weights_source']}); pass the same file "
                            f"with --weights")
        self.feature = attrs["feature"]
        self.dtype = np.dtype("uint8" if self.feature == "pixels" else attrs["dtype"])
        self.frame_size = int(attrs["frame_size"])
        self.reads = "state" if spec.reads == "state" else "image"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.encoder(frames).cpu().numpy().astype(self.dtype)

    def observe(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Features of env observations: of their frames, or for `state` of their simulator state."""
        return self(np.stack([obs[self.reads] for obs in observations]))
