"""`state`: the env's low-dimensional simulator state as the embedding, no frames at all.

The upper bound a study holds the PVRs against, and how the agents are held against the published
state-based curves. Every dataset already holds the state of each step (`state.npy`); online the
agent is given the env's state instead of its frame. Its size depends on the env.
"""

from pipeline.encoders.spec import EncoderSpec, register

register(EncoderSpec(
    name="state", family="state", architecture="", weights="none", resolution=0,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pooling="none (the simulator state, float32)", embed_dim=0,
    arch_type="none", training_data="none", data_diversity="n/a",
    objective="none (the world model learns from the true state)", video=False, language=False, reads="state"))
