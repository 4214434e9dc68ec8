"""The `state` encoder: the simulator state as the embedding, offline (encode) and online (finetune)."""

from __future__ import annotations

import json

import numpy as np

from conftest import collect_toy
from pipeline.config import EncodeConfig, FinetuneConfig
from pipeline.encoders.store_encoder import StoreEncoder
from pipeline.envs import make_env
from pipeline.storage.embedding_store import read_store
from stages import encode, finetune


def test_state_store_holds_the_states_and_online_agents_see_the_envs_state(tmp_path):
    collect_toy(tmp_path / "toy", episodes=3, max_steps=30)
    manifest = json.loads((tmp_path / "toy/manifest.json").read_text())
    assert manifest["time_limit"] == 100 and manifest["episodic"] is False
    store = encode.run(EncodeConfig(model="state", dataset=str(tmp_path / "toy"), out=str(tmp_path / "state.zarr")),
                       show_progress=False)
    arrays, _, attrs = read_store(store)
    assert arrays["embedding"].dtype == np.float32 and arrays["embedding"].shape == (93, 6)
    np.testing.assert_array_equal(arrays["embedding"], arrays["state"])
    assert attrs["time_limit"] == 100 and attrs["properties"]["reads"] == "state"

    env = make_env("toy/pointmass-reach")
    observation, _ = env.reset(seed=5)
    np.testing.assert_array_equal(StoreEncoder(attrs).observe([observation])[0], observation["state"])

    out, = finetune.run(FinetuneConfig(store=store, world_model="tdmpc", preset="xs", offline_fraction=0,
                                      seed_steps=30, env_steps=60, eval_every=30, eval_episodes=1,
                                      out=tmp_path / "ft"), show_progress=False)
    online, _, _ = read_store(str(out / "online.zarr"))
    np.testing.assert_array_equal(online["embedding"], online["state"])
    updates = (out / "live/plots/metrics/train/updates.tsv").read_text().splitlines()[1:]
    assert [int(float(row.split("\t")[1])) for row in updates] == [0, 60]   # no updates while seeding
