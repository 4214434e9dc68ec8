"""What a PVR is: `EncoderSpec`, and the registry of them by name (`pvr-pipe models`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pipeline.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

StateDict = dict[str, Any]


@dataclass(frozen=True)
class EncoderSpec:
    """A frozen PVR: how to build it, where its weights come from, how it sees an image.

    `weights` is one of: `timm` (the pretrained tag of `architecture`, from the Hugging Face hub
    cache or a local file), `file` (a checkpoint in the PVR's own layout, mapped into the timm
    architecture by `key_mapping`), `bundled` (a file a Python package ships, located by
    `bundled_path`), `random-init` (seeded random weights), `none` (no model: pixels).
    """

    name: str
    family: str
    architecture: str                       # timm model name (with pretrained tag for `timm`)
    weights: Literal["timm", "file", "bundled", "random-init", "none"]
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pooling: str                            # what the embedding is: cls token, avg, map, projection head
    embed_dim: int
    arch_type: Literal["vit", "cnn", "none"]
    training_data: str
    data_diversity: Literal["low", "medium", "high", "n/a"]
    objective: str
    video: bool
    language: bool
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_filename: str = ""              # expected name in the weights directory
    weights_url: str = ""                   # where a person can obtain the file
    key_mapping: Callable[[StateDict], StateDict] | None = None
    bundled_path: Callable[[], str] | None = None
    interpolation: str = "bicubic"
    drop_head: bool = False                 # checkpoint has a classifier: load it, then remove it
    notes: str = ""
    reads: Literal["frames", "state"] = "frames"   # what it embeds: the camera frame or the simulator state

    def properties(self) -> dict[str, Any]:
        """The properties the paper analyses, plus what defines the embedding."""
        return {"architecture": self.arch_type, "timm_architecture": self.architecture,
                "training_data": self.training_data, "data_diversity": self.data_diversity,
                "objective": self.objective, "video": self.video, "language": self.language,
                "resolution": self.resolution, "pooling": self.pooling, "embed_dim": self.embed_dim,
                "reads": self.reads}


_REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> EncoderSpec:
    _REGISTRY[spec.name] = spec
    return spec


def encoder_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    _load_families()
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(sorted(_REGISTRY))} "
                        "(see `pvr-pipe models`)")
    return _REGISTRY[name]


def _load_families() -> None:
    from pipeline.encoders import (clip, dinov2, efficientnet_lite0, mae, mvp, pixels,  # noqa: F401
                                   r3m, random_vit, resnet_imagenet, siglip, state, vc1, vip)
