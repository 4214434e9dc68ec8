"""VC-1 (Majumdar et al. 2023): MAE on Ego4D + manipulation, navigation and ImageNet frames.

Weights: the released checkpoints `vc1_vitb.pth` / `vc1_vitl.pth` (MAE layout), placed in the
weights directory or passed with --weights. The embedding is the CLS token after the final norm.
"""

from pipeline.encoders.mae import mae_layout_to_timm
from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

for _name, _arch, _dim, _file in (("vc1", "vit_base_patch16_224", 768, "vc1_vitb.pth"),
                                  ("vc1-vitl", "vit_large_patch16_224", 1024, "vc1_vitl.pth")):
    register(EncoderSpec(
        name=_name, family="vc1", architecture=_arch, weights="file", resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls token", embed_dim=_dim, arch_type="vit",
        training_data="Ego4D + manipulation + navigation + ImageNet (CortexBench 'Ego4D+MNI')",
        data_diversity="high", objective="masked autoencoding", video=True, language=False,
        model_kwargs={"num_classes": 0, "global_pool": "token"}, weights_filename=_file,
        weights_url="https://github.com/facebookresearch/eai-vc (model card: vc1_vitb / vc1_vitl)",
        key_mapping=mae_layout_to_timm))
