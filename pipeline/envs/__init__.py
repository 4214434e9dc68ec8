"""Envs by id (`dmc/cartpole-swingup`, ...) with named visual variants; see `registry`."""

from pipeline.envs.registry import check_variant, env_ids, get_entry, make_env

__all__ = ["check_variant", "env_ids", "get_entry", "make_env"]
