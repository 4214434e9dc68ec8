"""VIP (Ma et al. 2023): value-implicit pre-training on Ego4D; ResNet-50 with a 1024-d head.

Weights: the released `model.pt`, state dict under `vip` with keys `module.convnet.*` (the
ResNet plus `fc`, 2048 -> 1024); place it in the weights directory as `vip_resnet50.pt`.
"""

from pipeline.encoders.r3m import convnet_layout_to_timm
from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, StateDict, register


def vip_to_timm(checkpoint: StateDict) -> StateDict:
    return convnet_layout_to_timm(checkpoint, "vip")


register(EncoderSpec(
    name="vip", family="vip", architecture="resnet50", weights="file", resolution=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="global average + linear head", embed_dim=1024,
    arch_type="cnn", training_data="Ego4D (egocentric video)", data_diversity="high",
    objective="value-implicit (goal-conditioned RL on video)", video=True, language=False,
    model_kwargs={"num_classes": 1024}, weights_filename="vip_resnet50.pt",
    weights_url="https://github.com/facebookresearch/vip (resnet50 model.pt)", key_mapping=vip_to_timm))
