"""Miniworld (`miniworld/<Env>-v0`): 3D rooms seen through the agent's own camera.

Navigation and pick-up tasks with discrete actions (Miniworld's own `Discrete(n)`; datasets
store them one-hot), square frames of `frame_size` pixels, Miniworld's time limits as
truncations and its task ends (goal reached, all objects picked up, stepping into the street)
as terminals; action repeat 1. The state is the agent's position (x, z) and the cos and sin
of its heading `dir` (it faces (cos, -sin) in (x, z)), then every other entity's position
(x, z) in the order Miniworld places them, then whether each is still in the world
(PickupObjects removes what is picked up). Only the agent's camera exists; `fast_render` has
no effect.

Rendering is headless through pyglet's EGL back end; Miniworld is imported only when an env is
built, with pyglet switched to headless first (Miniworld does it too late).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from pipeline.envs.registry import EnvEntry, register
from pipeline.envs.variants import TRAIN, random_colors, variant_rng
from pipeline.errors import UserError

VARIANTS = (TRAIN, "wall_texture", "floor_texture", "lighting", "object_color")
# The sky (the GL clear colour) shows only in envs whose rooms have no ceiling.
SKY_VARIANTS = VARIANTS + ("sky_color",)
ENVS = {
    "OneRoom": "reach the red box in a 10 x 10 room",
    "FourRooms": "reach the red box in one of four connected rooms",
    "PickupObjects": "pick up five boxes, balls and keys in a walled yard (+1 each)",
    "Sidewalk": "walk along a sidewalk to the red box without stepping into the street",
    "Hallway": "reach the red box at the end of a hallway",
    "TMaze": "reach the red box at one end of a T-maze",
    "YMaze": "reach the red box in one arm of a Y-maze",
    "WallGap": "reach the red box behind a wall, through its gap",
    "MazeS3": "reach the red box in a random 3 x 3 maze",
}
_OPEN_SKY = {"PickupObjects", "Sidewalk", "WallGap"}

for _task, _description in ENVS.items():
    register(EnvEntry(id=f"miniworld/{_task}-v0", suite="miniworld",
                      variants=SKY_VARIANTS if _task in _OPEN_SKY else VARIANTS,
                      factory="pipeline.envs.miniworld:MiniworldEnv", kwargs={"task": _task},
                      description=f"Miniworld {_task}: {_description}"))


@dataclass(frozen=True)
class Look:
    """What a variant changes: only how the world is drawn, never where anything is."""

    textures: dict[str, dict[str, str]] = field(default_factory=dict)  # Room keyword -> family map
    params: dict[str, np.ndarray] = field(default_factory=dict)  # Miniworld param -> fixed value
    colors: dict[str, str] = field(default_factory=dict)  # Miniworld colour name -> another one


class MiniworldEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    episodic = True    # reaching the goal ends an episode

    def __init__(self, task: str, variant: str = TRAIN, variant_seed: int = 0, frame_size: int = 64,
                 action_repeat: int | None = None, camera: int | None = None, fast_render: bool = False,
                 step_frames: bool = True):
        if camera not in (None, 0):
            raise UserError(f"Miniworld renders only the agent's own camera (0), not camera {camera}")
        envs = _import_miniworld()
        look = _look(variant, variant_seed)
        # Miniworld prints its GL fallbacks (fewer multisamples) to stdout, which is pvr-pipe's.
        with contextlib.redirect_stdout(io.StringIO()):
            # The human-view buffer (window_*) is never drawn; keep it as small as the frames.
            self._env = _styled(getattr(envs, task), look)(
                obs_width=frame_size, obs_height=frame_size, window_width=frame_size,
                window_height=frame_size, params=_params(look.params))
        self.frame_size, self.step_frames = frame_size, step_frames
        self.action_repeat = action_repeat or 1
        self.time_limit = math.ceil(self._env.max_episode_steps / self.action_repeat)   # agent steps
        self.action_space = self._env.action_space
        # Seeded like the other suites, so unseeded resets are reproducible too.
        self._env.reset(seed=0)
        self._entities = self._placed_entities()
        entities = len(self._entities)
        self.state_keys = {"agent_position": 2, "agent_direction": 2, "entity_positions": 2 * entities,
                           "entity_present": entities}
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (sum(self.state_keys.values()),), np.float32),
        })

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        image, _ = self._env.reset(seed=seed)
        self._entities = self._placed_entities()
        return self._observation(image), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self.action_repeat):
            image, step_reward, terminated, truncated, _ = self._env.step(int(action))
            reward += step_reward
            if terminated or truncated:
                break
        observation = self._observation(image)
        if not self.step_frames:
            del observation["image"]   # Miniworld renders every step anyway: nothing to save
        return observation, float(reward), terminated, truncated, {}

    def render(self) -> np.ndarray:
        return self._env.render_obs()

    def _placed_entities(self) -> list:
        return [entity for entity in self._env.entities if entity is not self._env.agent]

    def _observation(self, image: np.ndarray) -> dict[str, np.ndarray]:
        agent = self._env.agent
        positions = [np.asarray(entity.pos, np.float64)[[0, 2]] for entity in self._entities]
        present = [entity in self._env.entities for entity in self._entities]
        state = np.concatenate([agent.pos[[0, 2]], [np.cos(agent.dir), np.sin(agent.dir)],
                                np.ravel(positions), present]).astype(np.float32)
        return {"image": image, "state": state}


def _import_miniworld():
    """`miniworld.envs`, imported for headless rendering (EGL, no X display needed)."""
    try:
        import pyglet

        # Must come before anything imports pyglet.window, as importing miniworld does.
        pyglet.options["headless"] = True
        import miniworld.envs
    except ModuleNotFoundError as error:
        raise UserError(f"Miniworld cannot be imported ({error}); install the extra: "
                        "pip install -e '.[miniworld]'") from None
    return miniworld.envs


def _look(variant: str, seed: int) -> Look:
    if variant == TRAIN:
        return Look()
    rng = variant_rng(variant, seed)
    if variant == "wall_texture":
        return Look(textures={"wall_tex": _derangement(rng, _texture_families())})
    if variant == "floor_texture":
        families = _derangement(rng, _texture_families())
        return Look(textures={"floor_tex": families, "ceil_tex": families})
    if variant == "sky_color":
        return Look(params={"sky_color": random_colors(rng, 1)[0]})
    if variant == "lighting":
        return Look(params={"light_color": rng.uniform(0.2, 1.0, 3), "light_ambient": rng.uniform(0.1, 0.6, 3),
                            "light_pos": rng.uniform((-40.0, 2.5, -40.0), (40.0, 5.0, 40.0))})
    if variant == "object_color":
        from miniworld.entity import COLOR_NAMES

        return Look(colors=_derangement(rng, COLOR_NAMES))
    raise ValueError(f"Miniworld has no variant {variant!r}")


def _derangement(rng: np.random.Generator, names: list[str]) -> dict[str, str]:
    """A random map of `names` onto themselves in which every name changes and distinct names
    stay distinct (one random cycle), so what the task tells apart stays apart."""
    order = [str(name) for name in rng.permutation(sorted(names))]
    return dict(zip(order, order[1:] + order[:1]))


def _texture_families() -> list[str]:
    """Miniworld's texture families: the `<family>_<n>.png` files its package ships."""
    import miniworld

    return sorted(path.name.removesuffix("_1.png")
                  for path in (Path(miniworld.__file__).parent / "textures").glob("*_1.png"))


def _params(values: dict[str, np.ndarray]):
    """Miniworld's default params with `values` fixed. A copy, not `no_random()`: the largest
    forward step also sets how near counts as reaching a goal, so it must stay as in `train`."""
    from miniworld.params import DEFAULT_PARAMS

    params = DEFAULT_PARAMS.copy()
    for name, value in values.items():
        params.set(name, np.asarray(value, np.float64))
    return params


# Every Miniworld env compiles its static scene into GL display list 1, and pyglet's contexts
# share display lists: with two envs in one process the last reset would be drawn by both.
# The owner of the compiled list is kept here; any other env recompiles its own before drawing.
_display_list = weakref.WeakValueDictionary()


def _styled(base: type, look: Look) -> type:
    """Miniworld env class `base` drawn with `look`."""
    from miniworld.miniworld import Room

    room_defaults = {name: parameter.default for name, parameter in inspect.signature(Room).parameters.items()
                     if name in ("wall_tex", "floor_tex", "ceil_tex")}

    class Styled(base):
        def add_room(self, **kwargs):
            # Rooms that connect_rooms adds take their textures from the rooms they join.
            for keyword, families in look.textures.items():
                name = kwargs.get(keyword, room_defaults[keyword])
                kwargs[keyword] = families.get(name, name)
            return super().add_room(**kwargs)

        def reset(self, *, seed=None, options=None):
            image, info = super().reset(seed=seed, options=options)
            if look.colors:
                _recolor(self.entities, look.colors)
                image = self.render_obs()
            return image, info

        def render_obs(self, frame_buffer=None):
            if _display_list.get("owner") is not self:
                self._render_static()
            return super().render_obs(frame_buffer)

        def _render_static(self):
            self.shadow_window.switch_to()
            super()._render_static()
            _display_list["owner"] = self

    Styled.__name__ = Styled.__qualname__ = base.__name__
    return Styled


def _recolor(entities: list, colors: dict[str, str]) -> None:
    """Give Miniworld's coloured objects (boxes; balls and keys, one mesh per colour) new colours.

    They are drawn anew every frame (not from the static display list), so this shows at once.
    """
    from miniworld.entity import COLORS, Box, MeshEnt
    from miniworld.objmesh import ObjMesh

    mesh_names = {id(mesh): Path(path).stem for path, mesh in ObjMesh.cache.items()}
    for entity in entities:
        if isinstance(entity, Box):
            entity.color_vec = COLORS[colors[entity.color]]
        elif isinstance(entity, MeshEnt):
            shape, _, color = mesh_names.get(id(entity.mesh), "").rpartition("_")
            if color in colors:
                entity.mesh = ObjMesh.get(f"{shape}_{colors[color]}")
