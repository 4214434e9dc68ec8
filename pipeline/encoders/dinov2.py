"""DINOv2 (Oquab et al. 2023): self-distillation on LVD-142M curated web images."""

from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

for _name, _arch, _dim in (("dinov2", "vit_small_patch14_dinov2.lvd142m", 384),
                           ("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", 768)):
    register(EncoderSpec(
        name=_name, family="dinov2", architecture=_arch, weights="timm", resolution=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls token", embed_dim=_dim, arch_type="vit",
        training_data="LVD-142M (curated web images)", data_diversity="high",
        objective="self-distillation (DINO + iBOT)", video=False, language=False,
        # 224 px (16x16 patches of 14 px); timm resamples the 518-px position embedding on load.
        model_kwargs={"img_size": 224, "num_classes": 0}))
