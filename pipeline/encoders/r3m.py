"""R3M (Nair et al. 2022): time-contrastive + video-language alignment on Ego4D, ResNet backbones.

Weights: the released `model.pt` of R3M, whose state dict sits under `r3m` with keys
`module.convnet.<torchvision resnet key>` (plus the language heads, dropped here); place it in
the weights directory as `r3m_resnet50.pt` / `r3m_resnet18.pt` or pass --weights.
"""

from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, StateDict, register


def convnet_layout_to_timm(checkpoint: StateDict, root: str) -> StateDict:
    """`{root: {"module.convnet.<key>": ...}}` (R3M, VIP) -> a timm ResNet state dict."""
    state = checkpoint.get(root, checkpoint)
    prefix = "module.convnet."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def r3m_to_timm(checkpoint: StateDict) -> StateDict:
    return convnet_layout_to_timm(checkpoint, "r3m")


for _name, _arch, _dim in (("r3m", "resnet50", 2048), ("r3m-rn18", "resnet18", 512)):
    register(EncoderSpec(
        name=_name, family="r3m", architecture=_arch, weights="file", resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="global average", embed_dim=_dim, arch_type="cnn",
        training_data="Ego4D (egocentric video + narrations)", data_diversity="high",
        objective="time-contrastive + video-language alignment", video=True, language=True,
        model_kwargs={"num_classes": 0}, weights_filename=f"r3m_{_arch}.pt",
        weights_url=f"https://github.com/facebookresearch/r3m (r3m_{_arch[6:]} model.pt)",
        key_mapping=r3m_to_timm))
