"""World models trained on cached embeddings (DreamerV3- and TD-MPC2-style); torch/numpy only."""
