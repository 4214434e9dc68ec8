"""A randomly initialised, frozen ViT-S/16: the baseline that tells what pre-training adds."""

from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

RANDOM_INIT_SEED = 0

register(EncoderSpec(
    name="random-vit", family="random", architecture="vit_small_patch16_224", weights="random-init",
    resolution=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="cls token", embed_dim=384,
    arch_type="vit", training_data="none", data_diversity="n/a", objective="none (random init)",
    video=False, language=False, model_kwargs={"num_classes": 0},
    notes=f"timm's initialisation under torch.manual_seed({RANDOM_INIT_SEED})"))
