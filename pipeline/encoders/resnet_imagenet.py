"""ResNet-50 supervised on ImageNet-1k (torchvision weights): the classic CNN baseline PVR."""

from pipeline.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

register(EncoderSpec(
    name="resnet50-imagenet", family="resnet-imagenet", architecture="resnet50.tv_in1k", weights="timm",
    resolution=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling="global average", embed_dim=2048,
    arch_type="cnn", training_data="ImageNet-1k", data_diversity="medium",
    objective="supervised classification", video=False, language=False,
    model_kwargs={"num_classes": 0}, interpolation="bilinear"))
