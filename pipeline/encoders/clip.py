"""CLIP (Radford et al. 2021): image-text contrastive learning on 400M web pairs (OpenAI)."""

from pipeline.encoders.spec import CLIP_MEAN, CLIP_STD, EncoderSpec, register

_COMMON = dict(family="clip", weights="timm", resolution=224, mean=CLIP_MEAN, std=CLIP_STD,
               training_data="WIT-400M (web image-text pairs)", data_diversity="high",
               objective="image-text contrastive", video=False, language=True)

register(EncoderSpec(name="clip", architecture="vit_base_patch16_clip_224.openai",
                     pooling="cls token + projection", embed_dim=512, arch_type="vit", **_COMMON))
register(EncoderSpec(name="clip-rn50", architecture="resnet50_clip.openai",
                     pooling="attention pool + projection", embed_dim=1024, arch_type="cnn", **_COMMON))
