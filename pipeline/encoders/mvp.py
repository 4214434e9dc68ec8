"""MVP (Xiao et al. 2022; Radosavovic et al. 2022): MAE on egocentric/interaction video frames.

Weights: the released MAE-layout checkpoint (ViT-B/16, Ego-soup), in the weights directory as
`mvp_vitb_egosoup.pth` or passed with --weights.
"""

from pipeline.encoders.mae import mae_layout_to_timm
from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

register(EncoderSpec(
    name="mvp", family="mvp", architecture="vit_base_patch16_224", weights="file", resolution=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls token", embed_dim=768, arch_type="vit",
    training_data="Ego-soup (Ego4D, 100DOH, Something-Something, Epic-Kitchens, ImageNet frames)",
    data_diversity="high", objective="masked autoencoding", video=True, language=False,
    model_kwargs={"num_classes": 0, "global_pool": "token"}, weights_filename="mvp_vitb_egosoup.pth",
    weights_url="https://github.com/ir413/mvp (mae_pretrain_egosoup_vit_base.pth)",
    key_mapping=mae_layout_to_timm))
