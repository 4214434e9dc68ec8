"""Analyses of embeddings that do not need a world model (e.g. how much state they keep)."""
