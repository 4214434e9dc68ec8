"""SigLIP (Zhai et al. 2023): image-text learning with a sigmoid loss on WebLI."""

from pipeline.encoders.spec import HALF, EncoderSpec, register

register(EncoderSpec(
    name="siglip", family="siglip", architecture="vit_base_patch16_siglip_224.webli", weights="timm",
    resolution=224, mean=HALF, std=HALF, pooling="attention pool (MAP)", embed_dim=768, arch_type="vit",
    training_data="WebLI (web image-text pairs)", data_diversity="high",
    objective="image-text sigmoid contrastive", video=False, language=True,
    model_kwargs={"num_classes": 0}))
