"""Analyses: of embeddings without a world model (`linear_probe`: how much state they keep), and
of trained world models (`model_quality`: prediction and reward errors)."""
