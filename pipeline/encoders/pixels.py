"""`pixels`: the from-scratch baseline. No model: frames down-sampled to 64x64 uint8."""

from pipeline.encoders.spec import EncoderSpec, register

PIXEL_SIZE = 64

register(EncoderSpec(
    name="pixels", family="pixels", architecture="", weights="none", resolution=PIXEL_SIZE,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pooling="none (3x64x64 uint8)", embed_dim=3 * 64 * 64,
    arch_type="none", training_data="none", data_diversity="n/a",
    objective="none (the world model learns its own encoder)", video=False, language=False,
    interpolation="bilinear"))
