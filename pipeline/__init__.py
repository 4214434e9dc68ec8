"""The library the pvr-pipe stages share: configs, envs, policies, storage."""

__version__ = "0.1.0"
