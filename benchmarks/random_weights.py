"""Random weights of a registry entry's real architecture, saved where the registry looks for them.

No pretrained weights can be downloaded here, and throughput does not depend on weight values;
loading them goes through the registry's real loading path.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from pipeline.encoders import get_spec


def write_random_weights(model_name: str, weights_dir: Path) -> None:
    from safetensors.torch import save_file

    spec = get_spec(model_name)
    model = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if spec.weights == "timm":
        save_file(state, str(weights_dir / f"{spec.name}.safetensors"))
    else:  # R3M layout, mapped back by the registry's key mapping
        torch.save({"r3m": {f"module.convnet.{k}": v for k, v in state.items()}}, weights_dir / spec.weights_filename)
