"""A frozen PVR ready to embed frames: the timm model with its weights, preprocessing and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encoders.spec import EncoderSpec
from pipeline.encoders.weights import find_weights, load_into, missing_hub_weights, read_state_dict
from pipeline.errors import UserError


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        torch.ops.mkldnn._is_mkldnn_bf16_supported()


class FrozenEncoder:
    """`encoder(frames)`: (N, H, W, 3) uint8 frames -> (N, D) float32 embeddings (or, for
    `pixels`, (N, 3, 64, 64) uint8; for `state`, (N, S) states -> the same). Same preprocessing
    offline (encode) and online (finetune).
    """

    def __init__(self, spec: EncoderSpec, weights: Path | None = None, download: bool = False,
                 device: str = "cpu", precision: str = "auto", compile: bool = False):
        self.spec = spec
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise UserError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
        self.bf16 = {"auto": bf16_supported(self.device), "bf16": True, "fp32": False}[precision]
        self.weights_sha256, self.weights_source = "none", "none"
        self.model = None if spec.weights == "none" else self._build(weights, download)
        if self.model is not None:
            self.model.eval().requires_grad_(False).to(self.device)
            if spec.arch_type == "cnn":
                self.model = self.model.to(memory_format=torch.channels_last)
            self._forward = torch.compile(self.model) if compile else self.model
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

    def _build(self, weights: Path | None, download: bool) -> torch.nn.Module:
        import timm

        spec = self.spec
        if spec.weights == "random-init":
            from pipeline.encoders.random_vit import RANDOM_INIT_SEED

            with torch.random.fork_rng():
                torch.manual_seed(RANDOM_INIT_SEED)
                model = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs)
            self.weights_sha256, self.weights_source = "random-init", f"seed {RANDOM_INIT_SEED}"
            return model
        found = find_weights(spec, weights)
        if spec.weights == "timm":
            if found is None and not download:
                raise missing_hub_weights(spec)
            overlay = {"pretrained_cfg_overlay": {"file": str(found.path)}} if found else {}
            try:
                model = timm.create_model(spec.architecture, pretrained=True, **overlay, **spec.model_kwargs)
            except (RuntimeError, OSError, ValueError, KeyError) as error:
                where = found.path if found else "the Hugging Face hub"
                raise UserError(f"weights for '{spec.name}' from {where} could not be loaded "
                                f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
            found = found or find_weights(spec)  # after a download: the file in the hub cache
            self.weights_sha256 = found.sha256 if found else "unknown (downloaded)"
            self.weights_source = found.source if found else "hub"
            return model
        model = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs)
        state = read_state_dict(found.path)
        load_into(model, spec.key_mapping(state) if spec.key_mapping else state, spec, found.path)
        if spec.drop_head:
            model.reset_classifier(0)
        self.weights_sha256, self.weights_source = found.sha256, found.source
        return model

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> the model's input: (N, 3, R, R), resized and normalised; for
        `state`, (N, S) simulator states -> float32 as they are."""
        if self.spec.reads == "state":
            return torch.as_tensor(np.asarray(frames, np.float32)).to(self.device)
        if isinstance(frames, np.ndarray) and not frames.flags.writeable:
            frames = frames.copy()  # torch wants writable memory; the float conversion copies anyway
        x = torch.as_tensor(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        size = self.spec.resolution
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode=self.spec.interpolation, antialias=True,
                              align_corners=False).clamp_(0.0, 1.0)
        if self.model is None:  # pixels: stored as uint8, normalised by the world model
            return x.mul_(255.0).round_().to(torch.uint8)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.spec.arch_type == "cnn" else x

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            return x
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._forward(x).float()

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.forward(self.preprocess(frames))

    def provenance(self) -> dict[str, Any]:
        spec = self.spec
        return {"encoder": spec.name, "family": spec.family, "timm_architecture": spec.architecture,
                "weights_sha256": self.weights_sha256, "weights_source": self.weights_source,
                "resolution": spec.resolution, "interpolation": spec.interpolation,
                "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
                "pooling": spec.pooling, "embed_dim": spec.embed_dim,
                "compute_precision": "bf16-autocast" if self.bf16 and self.model is not None else "fp32",
                "properties": spec.properties()}
