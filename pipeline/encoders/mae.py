"""MAE (He et al. 2022): masked autoencoding on ImageNet; also the checkpoint layout of VC-1 and MVP.

MAE-layout checkpoints store the encoder under `model` with timm's ViT key names, next to the
decoder (`decoder_*`, `mask_token`) that a frozen encoder does not need.
"""

from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, StateDict, register


def mae_layout_to_timm(checkpoint: StateDict) -> StateDict:
    """An MAE-style checkpoint (`{"model": ...}` or bare) -> a timm ViT state dict (encoder only)."""
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items()
            if not k.startswith(("decoder", "mask_token")) and not k.startswith("head.")}


register(EncoderSpec(
    name="mae", family="mae", architecture="vit_base_patch16_224.mae", weights="timm", resolution=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls token", embed_dim=768, arch_type="vit",
    training_data="ImageNet-1k", data_diversity="medium", objective="masked autoencoding",
    video=False, language=False, model_kwargs={"num_classes": 0, "global_pool": "token"}))
