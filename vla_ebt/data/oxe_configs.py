"""Per-dataset standardization configs for Open X-Embodiment (RLDS) datasets and this project's
sim datasets.

Each :class:`DatasetConfig` says where, in an RLDS episode (a ``tf.train.Example`` with flattened
keys ``steps/...`` and ``episode_metadata/...``), the camera images, robot state, action and
language instruction live, with their per-step shapes as published in the datasets'
``features.json`` (OXE release, ``gs://gresearch/robotics/<name>/<version>``), plus the action /
state encoding, gripper convention and control frequency.

Standardized outputs (what the converter stores, one row per step):

* ``action`` (T, action_dim) float32: the concatenation of :attr:`DatasetConfig.action` parts,
  each optionally sliced and (for the gripper part) mapped to the standard gripper convention
  **1 = open, 0 = closed** (``gripper`` transform). Nothing is truncated to 7-D: e.g. DROID keeps
  its 7-D action, language_table its 2-D one; the loader pads to the model's max dim.
* ``state`` (T, state_dim) float32: the concatenation of :attr:`DatasetConfig.state` parts.
* images: for each camera role (``primary``, ``secondary``, ``wrist``) the RLDS key or None.

Gripper transforms (``Part.gripper``):

=====================  =====================================================================
``none``               not a gripper part (or already 1 = open, 0 = closed)
``invert``             ``1 - x`` (source: 1 = closed, 0 = open)
``pm1_open_pos``       ``(clip(x, -1, 1) + 1) / 2`` (source: +1 = open, -1 = closed)
``pm1_close_pos``      ``(1 - clip(x, -1, 1)) / 2`` (source: +1 = close, -1 = open; absolute)
``rel_pm1_close_pos``  relative commands (+1 = close, -1 = open, 0 = keep) -> absolute
                       1 = open / 0 = closed, holding the last command; steps before the first
                       command take the opposite of that first command (as Octo's
                       ``rel2abs_gripper_actions``)
=====================  =====================================================================

Look up a config with :func:`get_config`; an unknown name raises ``ValueError`` listing the known
names. Register your own robot with :func:`register_config`.

Layout variants: one dataset can be served in more than one layout (BridgeData V2: the OXE
release ``bridge`` with ``observation/image`` and a split ``action/...`` dict, and the
tensorflow-datasets catalog's ``bridge`` with ``observation/image_0..3`` and a flat 7-D
``action``). Each layout is its own config; a variant names its base dataset in
:attr:`DatasetConfig.variant_of` (``bridge_tfds`` is a variant of ``bridge``), and
:func:`layout_candidates` lists a name's configs so the converter can pick the one that fits a
dataset's ``features.json`` (``--dataset bridge`` converts either layout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..registry import Registry

__all__ = [
    "Part",
    "DatasetConfig",
    "get_config",
    "register_config",
    "known_datasets",
    "layout_candidates",
    "apply_gripper",
    "GRIPPER_TRANSFORMS",
    "CAMERA_ROLES",
]

GRIPPER_TRANSFORMS = ("none", "invert", "pm1_open_pos", "pm1_close_pos", "rel_pm1_close_pos")
CAMERA_ROLES = ("primary", "secondary", "wrist")

ActionEncoding = Literal[
    "eef_delta_xyz_rpy_gripper",  # 7: delta position (3), delta rotation rpy (3), gripper (1)
    "eef_delta_xyz_gripper",  # 4: delta position (3), gripper (1)
    "eef_delta_xy",  # 2: planar end-effector delta (language_table)
    "eef_vel_xyz_rpy_gripper",  # 7: cartesian velocity (6), absolute gripper (1) (DROID)
    "joint_pos",  # absolute joint positions (+ gripper)
    "joint_vel_gripper",  # joint velocities + absolute gripper
    "sim_delta",  # this project's sim suites
]
StateEncoding = Literal[
    "eef_pos_quat_gripper",  # xyz (3) + quaternion (4) + gripper (1)
    "eef_pos_euler_gripper",  # xyz (3) + euler (3) + gripper (1)
    "eef_pos_quat",  # xyz + quaternion (jaco)
    "joint_pos_gripper",  # joints + gripper
    "eef_xy",  # planar position
    "sim_state",
]


@dataclass(frozen=True)
class Part:
    """One source field of a standardized vector.

    key:     RLDS key relative to ``steps/`` (e.g. ``"action/world_vector"``).
    shape:   the published per-step shape of that key (product = values per step).
    take:    optional (start, stop) slice of the flattened per-step vector.
    gripper: one of :data:`GRIPPER_TRANSFORMS` (applied after ``take``).
    """

    key: str
    shape: tuple[int, ...]
    take: tuple[int, int] | None = None
    gripper: str = "none"

    def __post_init__(self) -> None:
        if self.gripper not in GRIPPER_TRANSFORMS:
            raise ValueError(f"Part {self.key!r}: gripper must be one of {GRIPPER_TRANSFORMS}, got {self.gripper!r}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def dim(self) -> int:
        """Width contributed to the standardized vector."""
        if self.take is None:
            return self.size
        return self.take[1] - self.take[0]


@dataclass(frozen=True)
class DatasetConfig:
    """How to standardize one dataset (see module docstring).

    cameras:        role -> (RLDS key relative to ``steps/``, published (H, W, 3) shape) or None.
    language_key:   key relative to ``steps/``; ``language_encoding`` "string" (bytes per step)
                    or "utf8_int" (int array of UTF-8 codes, zero padded: language_table).
    control_hz:     control frequency of the recorded data (None: unknown).
    extra_keys:     other step keys present in the published layout (documented; not read).
    variant_of:     for another layout of a dataset registered under a different name: that name
                    (``--dataset <that name>`` picks whichever layout fits ``features.json``).
    """

    name: str
    cameras: dict[str, tuple[str, tuple[int, int, int]] | None]
    state: tuple[Part, ...]
    action: tuple[Part, ...]
    action_encoding: str
    state_encoding: str
    language_key: str
    control_hz: float | None
    language_encoding: Literal["string", "utf8_int"] = "string"
    language_shape: tuple[int, ...] = ()
    gripper_convention: str = "1 = open, 0 = closed (after transform)"
    version: str = ""
    extra_keys: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    notes: str = ""
    variant_of: str = ""

    @property
    def action_dim(self) -> int:
        return sum(p.dim for p in self.action)

    @property
    def state_dim(self) -> int:
        return sum(p.dim for p in self.state)

    def camera_roles(self) -> list[str]:
        """Roles with a camera, in :data:`CAMERA_ROLES` order."""
        return [r for r in CAMERA_ROLES if self.cameras.get(r) is not None]

    def required_step_keys(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``steps/...`` key -> (per-step shape, kind) for every field the converter reads.
        kind: "image" (encoded bytes), "string", "float", "int"."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for role in self.camera_roles():
            key, shape = self.cameras[role]  # type: ignore[misc]
            out[f"steps/{key}"] = (tuple(shape), "image")
        for p in self.state + self.action:
            out[f"steps/{p.key}"] = (tuple(p.shape), "float")
        if not self.language_key:  # no instruction in the data (a fixed --instruction text)
            pass
        elif self.language_encoding == "string":
            out[f"steps/{self.language_key}"] = ((), "string")
        else:
            out[f"steps/{self.language_key}"] = (tuple(self.language_shape), "int")
        return out

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d["action_dim"], d["state_dim"] = self.action_dim, self.state_dim
        return d


def apply_gripper(x: np.ndarray, transform: str) -> np.ndarray:
    """Map a (T, k) gripper column block to 1 = open / 0 = closed (see module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    if transform == "none":
        return x
    if transform == "invert":
        return 1.0 - x
    if transform == "pm1_open_pos":
        return (np.clip(x, -1, 1) + 1.0) / 2.0
    if transform == "pm1_close_pos":
        return (1.0 - np.clip(x, -1, 1)) / 2.0
    if transform == "rel_pm1_close_pos":
        out = np.empty_like(x)
        for j in range(x.shape[1]):
            col = np.clip(x[:, j], -1, 1)
            cmd = np.where(col > 0.5, 0.0, np.where(col < -0.5, 1.0, np.nan))  # close -> 0, open -> 1
            nz = np.flatnonzero(~np.isnan(cmd))
            if nz.size == 0:
                out[:, j] = 1.0  # never commanded: open throughout
                continue
            state = 1.0 - cmd[nz[0]]  # before the first command: the opposite state
            for t in range(col.shape[0]):
                if not np.isnan(cmd[t]):
                    state = cmd[t]
                out[t, j] = state
        return out
    raise ValueError(f"unknown gripper transform {transform!r}; known: {GRIPPER_TRANSFORMS}")


_REGISTRY: Registry[DatasetConfig] = Registry("dataset")


def register_config(cfg: DatasetConfig, overwrite: bool = False) -> DatasetConfig:
    """Add ``cfg`` to the registry under ``cfg.name`` (ValueError if the name exists and not
    ``overwrite``, or for an unknown camera role)."""
    for role in cfg.cameras:
        if role not in CAMERA_ROLES:
            raise ValueError(f"dataset config {cfg.name!r}: unknown camera role {role!r}; known: {CAMERA_ROLES}")
    return _REGISTRY.register(cfg.name, overwrite=overwrite)(cfg)


def known_datasets() -> list[str]:
    """Sorted names of the registered dataset configs."""
    return _REGISTRY.names()


def get_config(name: str) -> DatasetConfig:
    """The registered config of dataset ``name``; ValueError listing the known names otherwise."""
    return _REGISTRY.get(name)


def layout_candidates(name: str) -> list[DatasetConfig]:
    """The configs ``--dataset name`` may convert with, in the order tried: ``name``'s own config,
    then the registered variants of it (:attr:`DatasetConfig.variant_of`), by name. ValueError
    listing the known names for an unknown ``name``."""
    base = get_config(name)
    return [base] + [get_config(n) for n in known_datasets() if get_config(n).variant_of == name]


# ------------------------------------------------------------------------------------------
# Open X-Embodiment datasets (key names / shapes from their published features.json)
# ------------------------------------------------------------------------------------------

_EMB512 = ((512,), "float")

register_config(DatasetConfig(
    name="fractal20220817_data",  # RT-1 (Google robot), 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/image", (256, 320, 3)), "wrist": None},
    state=(Part("observation/base_pose_tool_reached", (7,)), Part("observation/gripper_closed", (1,), gripper="invert")),
    action=(
        Part("action/world_vector", (3,)),
        Part("action/rotation_delta", (3,)),
        Part("action/gripper_closedness_action", (1,), gripper="rel_pm1_close_pos"),
    ),
    action_encoding="eef_delta_xyz_rpy_gripper",
    state_encoding="eef_pos_quat_gripper",
    language_key="observation/natural_language_instruction",
    control_hz=3.0,
    extra_keys={
        "steps/observation/natural_language_embedding": _EMB512,
        "steps/action/terminate_episode": ((3,), "int32"),
        "steps/action/base_displacement_vector": ((2,), "float32"),
        "steps/action/base_displacement_vertical_rotation": ((1,), "float32"),
        "steps/observation/vector_to_go": ((3,), "float32"),
        "steps/observation/rotation_delta_to_go": ((3,), "float32"),
    },
))

register_config(DatasetConfig(
    name="bridge",  # BridgeData V2 as released in OXE, 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/image", (480, 640, 3)), "wrist": None},
    state=(Part("observation/state", (7,)),),
    action=(
        Part("action/world_vector", (3,)),
        Part("action/rotation_delta", (3,)),
        Part("action/open_gripper", (), gripper="none"),  # bool, 1 = open
    ),
    action_encoding="eef_delta_xyz_rpy_gripper",
    state_encoding="eef_pos_euler_gripper",
    language_key="observation/natural_language_instruction",
    control_hz=5.0,
    extra_keys={"steps/observation/natural_language_embedding": _EMB512,
                "steps/action/terminate_episode": ((), "float32")},
))

register_config(DatasetConfig(
    name="bridge_tfds",  # the tensorflow-datasets catalog's `bridge` (BridgeData V2 as RLDS), 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/image_0", (256, 256, 3)), "wrist": None},
    state=(Part("observation/state", (7,)),),  # eef xyz + euler + gripper
    action=(
        Part("action", (7,), take=(0, 6)),
        Part("action", (7,), take=(6, 7), gripper="none"),  # continuous, 1 = open
    ),
    action_encoding="eef_delta_xyz_rpy_gripper",
    state_encoding="eef_pos_euler_gripper",
    language_key="language_instruction",
    control_hz=5.0,
    variant_of="bridge",
    extra_keys={"steps/observation/image_1": ((256, 256, 3), "image"),
                "steps/observation/image_2": ((256, 256, 3), "image"),
                "steps/observation/image_3": ((256, 256, 3), "image"),
                "steps/language_embedding": _EMB512,
                "episode_metadata/has_image_0": ((), "bool"), "episode_metadata/has_image_1": ((), "bool"),
                "episode_metadata/has_image_2": ((), "bool"), "episode_metadata/has_image_3": ((), "bool"),
                "episode_metadata/has_language": ((), "bool")},
    notes="image_0 is the fixed over-the-shoulder camera every episode has (has_image_0); image_1..3 exist "
          "only where episode_metadata/has_image_N is set (image_3: wrist), so they are not read",
))

register_config(DatasetConfig(
    name="taco_play",  # 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/rgb_static", (150, 200, 3)), "wrist": ("observation/rgb_gripper", (84, 84, 3))},
    state=(Part("observation/robot_obs", (15,), take=(0, 6)), Part("observation/robot_obs", (15,), take=(6, 7))),
    action=(
        Part("action/rel_actions_world", (7,), take=(0, 6)),
        Part("action/rel_actions_world", (7,), take=(6, 7), gripper="pm1_open_pos"),
    ),
    action_encoding="eef_delta_xyz_rpy_gripper",
    state_encoding="eef_pos_euler_gripper",
    language_key="observation/natural_language_instruction",
    control_hz=15.0,
    extra_keys={"steps/observation/depth_static": ((150, 200), "float32"),
                "steps/observation/depth_gripper": ((84, 84), "float32"),
                "steps/action/actions": ((7,), "float32"),
                "steps/action/rel_actions_gripper": ((7,), "float32"),
                "steps/observation/natural_language_embedding": _EMB512},
))

register_config(DatasetConfig(
    name="jaco_play",  # 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/image", (224, 224, 3)), "wrist": ("observation/image_wrist", (224, 224, 3))},
    state=(Part("observation/end_effector_cartesian_pos", (7,)),),
    action=(
        Part("action/world_vector", (3,)),
        Part("action/gripper_closedness_action", (1,), gripper="rel_pm1_close_pos"),
    ),
    action_encoding="eef_delta_xyz_gripper",
    state_encoding="eef_pos_quat",
    language_key="observation/natural_language_instruction",
    control_hz=10.0,
    extra_keys={"steps/observation/joint_pos": ((8,), "float32"),
                "steps/observation/end_effector_cartesian_velocity": ((6,), "float32"),
                "steps/action/terminate_episode": ((3,), "int32"),
                "steps/observation/natural_language_embedding": _EMB512},
))

register_config(DatasetConfig(
    name="berkeley_autolab_ur5",  # 0.1.0
    version="0.1.0",
    cameras={"primary": ("observation/image", (480, 640, 3)), "wrist": ("observation/hand_image", (480, 640, 3))},
    state=(Part("observation/robot_state", (15,), take=(6, 14)),),  # eef xyz + quat + gripper
    action=(
        Part("action/world_vector", (3,)),
        Part("action/rotation_delta", (3,)),
        Part("action/gripper_closedness_action", (), gripper="rel_pm1_close_pos"),
    ),
    action_encoding="eef_delta_xyz_rpy_gripper",
    state_encoding="eef_pos_quat_gripper",
    language_key="observation/natural_language_instruction",
    control_hz=5.0,
    extra_keys={"steps/observation/image_with_depth": ((480, 640, 1), "float32"),
                "steps/action/terminate_episode": ((), "float32"),
                "steps/observation/natural_language_embedding": _EMB512},
))

register_config(DatasetConfig(
    name="language_table",  # 0.0.1
    version="0.0.1",
    cameras={"primary": ("observation/rgb", (360, 640, 3)), "wrist": None},
    state=(Part("observation/effector_translation", (2,)),),
    action=(Part("action", (2,)),),
    action_encoding="eef_delta_xy",
    state_encoding="eef_xy",
    language_key="observation/instruction",
    language_encoding="utf8_int",
    language_shape=(512,),
    control_hz=10.0,
    extra_keys={"steps/observation/effector_target_translation": ((2,), "float32")},
    notes="no gripper; the instruction is stored as 512 int32 UTF-8 codes, zero padded",
))

register_config(DatasetConfig(
    name="droid",  # 1.0.0
    version="1.0.0",
    cameras={
        "primary": ("observation/exterior_image_1_left", (180, 320, 3)),
        "secondary": ("observation/exterior_image_2_left", (180, 320, 3)),
        "wrist": ("observation/wrist_image_left", (180, 320, 3)),
    },
    state=(Part("observation/cartesian_position", (6,)), Part("observation/gripper_position", (1,), gripper="invert")),
    action=(
        Part("action_dict/cartesian_velocity", (6,)),
        Part("action_dict/gripper_position", (1,), gripper="invert"),
    ),
    action_encoding="eef_vel_xyz_rpy_gripper",
    state_encoding="eef_pos_euler_gripper",
    language_key="language_instruction",
    control_hz=15.0,
    extra_keys={"steps/action": ((7,), "float64"),
                "steps/observation/joint_position": ((7,), "float64"),
                "steps/language_instruction_2": ((), "string"),
                "steps/language_instruction_3": ((), "string"),
                "steps/action_dict/joint_velocity": ((7,), "float64")},
    notes="many DROID episodes have an empty instruction: convert with --skip-bad to drop them",
))

# ------------------------------------------------------------------------------------------
# This project's sim datasets (written by data_pipelines.shards.write_episodes, not RLDS)
# ------------------------------------------------------------------------------------------

register_config(DatasetConfig(
    name="reach2d",
    cameras={"primary": ("observation/image", (64, 64, 3))},
    state=(Part("observation/state", (2,)),),
    action=(Part("action", (2,)),),
    action_encoding="sim_delta",
    state_encoding="sim_state",
    language_key="language_instruction",
    control_hz=10.0,
    notes="eval/sim/suites/reach2d.py; no gripper",
))
