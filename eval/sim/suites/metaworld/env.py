"""metaworld: the Meta-World MT10 / MT50 manipulation tasks (Sawyer arm, MuJoCo) as a suite.

Wraps ``metaworld`` 3.1.1 (``*-v3`` tasks). Each task env is built directly from its class in
``metaworld.env_dict.ENV_CLS_MAP`` (no ``metaworld.MT10()`` benchmark object, which costs ~5 s
to build): the MT convention is applied by hand (goal position observable in the raw 39-dim
observation, ``partially_observable=False``) and the start state is re-drawn at every reset from
the task's own ``_random_reset_space`` with the env's seeded RNG (``seeded_rand_vec=True``,
``_freeze_rand_vec=False``). That is the distribution from which ``metaworld.MT10()`` draws its
50 fixed start states per task; here every seed gives a fresh one.

==============  ==================================================================================
tasks           ``benchmark="MT10"`` (default; ``reach-v3``, ``push-v3``, ``pick-place-v3``,
                ``door-open-v3``, ``drawer-open-v3``, ``drawer-close-v3``,
                ``button-press-topdown-v3``, ``peg-insert-side-v3``, ``window-open-v3``,
                ``window-close-v3``) or ``"MT50"`` (all 50 v3 tasks). :data:`HELDOUT_TASKS`
                (see below) can always be made with ``make_env`` for generalization tests.
observation     ``{"image": uint8 (3, S, S) for one camera or (V, 3, S, S) for V cameras,
                "state": float32 (state_dim,), "instruction": str}``. Images are upright
                (row 0 is the top; see "Rendering").
state_mode      ``"proprio"`` (default, 4 dims): hand xyz (m, world frame) + gripper opening in
                [0, 1] -- what a VLA gets besides its cameras; objects and goal must be read
                from the image. ``"proprio_object"`` (18 dims): Meta-World's current-frame block
                ``raw[:18]`` = hand xyz, gripper, object 1 pos + quat, object 2 pos + quat
                (zero padded), no goal. ``"full"`` (39 dims): the raw Meta-World observation in
                the MT convention (current frame, previous frame, goal xyz **present**).
action          float32 (4,) in [-1, 1] (``action_bounds()``): hand xyz delta (1 cm per unit per
                step, via the mocap target) and gripper effort (+1 closes). Out-of-box actions are
                clipped; wrong shapes / non-finite values raise ValueError.
termination     ``terminated`` on Meta-World's ``info["success"]`` (also
                ``info["is_success"]``); ``truncated`` after ``max_episode_steps`` (default
                200: see the expert numbers below). Reward: Meta-World's v2 shaped reward
                (in [0, 10]).
info            Meta-World's info (``success``, ``near_object``, ``grasp_success``,
                ``obj_to_target``, ...) plus ``is_success``, ``task``, ``step``.
expert          ``metaworld.policies.ENV_POLICY_MAP[task]`` (scripted, reads the raw 39-dim
                observation kept in ``env.raw_obs``) + optional N(0, noise^2) per action dim,
                clipped to [-1, 1].
==============  ==================================================================================

Instructions: every task has >= 5 "train" and >= 2 "heldout" paraphrases (:data:`INSTRUCTIONS`,
written for this suite, disjoint and unique across tasks); each episode draws one from its split.

Held-out tasks (:data:`HELDOUT_TASKS`, ``suite.heldout_tasks()``): ``door-close-v3``,
``button-press-v3``, ``push-wall-v3``, ``reach-wall-v3``, ``pick-place-wall-v3``. None is in
MT10 and each is a near-transfer variant of exactly one MT10 task (the reverse motion of
door-open; a front-facing instead of top-down button; push / reach / pick-place with a wall in
the way), so success on them measures generalization from language + vision to a new but
related task rather than learning a new skill from nothing. With ``benchmark="MT50"`` they are
part of ``task_names()``; ``train_tasks()`` excludes them (train on those for held-out studies).

Perturbations (recovery / distribution-shift studies):
  * ``env.displace_object(rng, scale)`` moves the task's main object mid-episode (the hook that
    :class:`eval.sim.perturb.DisplaceObject` calls) and returns its new position. Main object:
    the non-robot jointed body nearest to Meta-World's object position ``raw_obs[4:7]`` (puck,
    ball, nut, peg, mug, drawer, door, window, button, handle, lever, faucet, dial, plate, ...). A
    free body moves by ``scale`` m in a random horizontal direction (z kept, velocity zeroed,
    clipped to the table area x in [-0.45, 0.45], y in [0.35, 0.95]); a hinged / sliding body
    moves along its joint(s) by an arc of ``scale`` m at the object position, in a random
    direction or the opposite one if that moves farther within the joint range; ``reach-v3`` /
    ``reach-wall-v3`` move their goal instead. Typical scales: 0.05 - 0.15 (the reach2d default
    0.3 means 30 cm here, mostly clipped by the table or the joint range).
    Suite option ``displace_at_step=k`` applies it inside the env right after step k of every
    episode (``displace_scale``; RNG from the episode seed), which also works in env workers.
  * ``env.set_camera_offset(xyz)`` shifts every observation camera by ``xyz`` (m, in the camera's
    parent frame: world for the fixed corner cameras); ``None`` restores them.

Rendering: ``MUJOCO_GL`` is set to ``egl`` when unset (``osmesa`` if no libEGL is found) before
MuJoCo is first imported. One ``mujoco.Renderer`` per env renders every camera with multisampling
off (``model.vis.quality.offsamples = 0``) and the scene flags shadow / reflection / skybox /
haze off. Cameras whose up axis points down in the world (Meta-World's ``corner``, ``corner2``,
``corner3``, ``corner4``: rolled by 180 degrees in the XML) are rotated by 180 degrees (rows and
columns reversed), which makes them upright without mirroring.

Speed, measured on this 2-core CPU machine (Mesa software EGL; push-v3, ``corner2``;
``mujoco.Renderer`` update_scene + render + readback; the machine was shared with 2 - 4 other
jobs, load 3 - 5, so the numbers vary by ~2x between runs; ranges over 3 runs):

    =====  ==================================  ===========================
    S      MuJoCo defaults (4x multisampling,   this suite (all four off,
           shadows, reflections, skybox, haze)  offsamples = 0)
    =====  ==================================  ===========================
    64     75 - 275 ms/frame                    6.2 - 25 ms/frame
    128    78 - 210 ms/frame                    6.7 - 14 ms/frame
    =====  ==================================  ===========================

    One flag at a time (64 / 128 px, one loaded run): offsamples = 0 only 128 / 140 ms, shadows
    off only 34 / 26 ms, reflections off only 181 / 107 ms: shadows cost the most.
    env.step with the expert and one camera: 110 - 170 steps/s at 64 px (load ~3), 68 at 64 px
    and 51 at 128 px (load ~5); physics alone ~830 steps/s (1.2 ms / step, load ~5).

Env reuse: building a task env + its GL renderer takes 0.4 - 0.8 s, more than a short episode,
and ``collect_demos`` / ``evaluate`` build one env per episode, so ``close()`` hands the simulator
and renderer back to a per-suite pool that the next ``make_env`` of the same task reuses
(``reuse_envs=False`` turns this off); a pooled make_env + reset + close takes ~0.2 s (mostly
Meta-World's reset, which settles the hand with 2 x 50 physics steps). A reset fully
re-initializes the simulator (same seed -> identical observations, fresh or reused).

Scripted-expert success with this suite (``max_episode_steps=200``, 20 episodes per task, seeds
``episode_seed(0, task, i)``, image_size 16), as "successes of 20 at noise 0, at noise 0.1 (mean /
max length of the successful noise-0 episodes)": reach 20, 20 (49 / 72 steps); push 20, 20
(61 / 72); pick-place 20, 20 (53 / 60); door-open 19, 19 (81 / 123); drawer-open 20, 20
(90 / 93); drawer-close 20, 20 (78 / 79); button-press-topdown 20, 20 (65 / 74);
peg-insert-side 19, 18 (88 / 138); window-open 20, 20 (87 / 95); window-close 20, 20 (82 / 86).
Held-out tasks at noise 0: door-close 20 (68 / 77), button-press 20 (59 / 63), push-wall 20
(80 / 88), reach-wall 20 (48 / 77), pick-place-wall 20 (82 / 95). Over all 50 tasks (raw
Meta-World loop, seeds 0 - 19, up to 400 steps) most experts are 20 / 20 well under 200 steps;
exceptions: bin-picking (max 264 steps), push-back (max 356), peg-insert-side (max 249),
disassemble (max 182), stick-pull (15 / 20), box-close and soccer (18 / 20).

Determinism: ``make_env(task, seed)`` + ``reset()`` (or ``reset(seed=s)``) reproduces the start
state (object / goal positions), the images and the instruction; later ``reset()`` calls
continue the env's RNG stream. Different seeds give different object and goal positions.
"""

from __future__ import annotations

import atexit
import ctypes.util
import importlib.util
import functools
import os
import string
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import Suite, register_suite

__all__ = [
    "MetaWorldSuite",
    "MetaWorldEnv",
    "MetaWorldConfig",
    "BENCHMARKS",
    "HELDOUT_TASKS",
    "INSTRUCTIONS",
    "STATE_MODES",
    "ACTION_DIM",
    "configure_gl",
]

ACTION_DIM = 4
RAW_OBS_DIM = 39
STATE_MODES: dict[str, int] = {"proprio": 4, "proprio_object": 18, "full": RAW_OBS_DIM}
DEFAULT_MAX_EPISODE_STEPS = 200
BENCHMARKS = ("MT10", "MT50")
MIN_HINGE_RADIUS = 0.05  # displace_object: arc -> angle uses at least this radius (m)
TABLE_XY_LOW = np.array([-0.45, 0.35])  # displace_object keeps free objects on the table
TABLE_XY_HIGH = np.array([0.45, 0.95])
_ROBOT_JOINT_PREFIXES = ("right_j", "r_close", "l_close")
_REACH_TASKS = ("reach-v3", "reach-wall-v3")
_MAX_IDLE_PER_TASK = 4

HELDOUT_TASKS: tuple[str, ...] = (
    "door-close-v3",
    "button-press-v3",
    "push-wall-v3",
    "reach-wall-v3",
    "pick-place-wall-v3",
)

# task -> (train paraphrases, heldout paraphrases); covers all 50 MT50 tasks.
INSTRUCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "assembly-v3": (
        ("put the ring onto the peg", "place the nut on the peg", "slide the ring over the peg",
         "assemble the nut onto the peg", "pick up the ring and drop it on the peg"),
        ("fit the round nut over the peg", "thread the ring onto the peg"),
    ),
    "basketball-v3": (
        ("dunk the ball into the hoop", "put the ball in the basket", "pick up the ball and score in the hoop",
         "drop the basketball through the hoop", "shoot the ball into the basket"),
        ("make a basket with the ball", "score the ball through the ring"),
    ),
    "bin-picking-v3": (
        ("move the cube from one bin to the other", "pick the block out of the bin and put it in the other bin",
         "transfer the cube to the second bin", "take the block from the left bin to the right bin",
         "place the cube in the other bin"),
        ("carry the block over to the empty bin", "relocate the cube into the other container"),
    ),
    "box-close-v3": (
        ("put the lid on the box", "close the box with its lid", "place the lid onto the box",
         "cover the box", "pick up the lid and close the box"),
        ("shut the box by adding the lid", "set the cover on top of the box"),
    ),
    "button-press-topdown-v3": (
        ("press the button from above", "push the button down", "press down on the button",
         "push the button from the top", "press the top button"),
        ("tap the button downward", "hit the button straight down"),
    ),
    "button-press-topdown-wall-v3": (
        ("press the button from above behind the wall", "push down the button next to the wall",
         "press down on the button by the wall", "reach over the wall and push the button down",
         "press the walled button from the top"),
        ("tap the button behind the barrier downward", "hit the button past the wall straight down"),
    ),
    "button-press-v3": (
        ("press the button", "push the button in", "press the button on the front of the box",
         "push the button forward", "press the button horizontally"),
        ("poke the button on the box", "jab the front button"),
    ),
    "button-press-wall-v3": (
        ("press the button behind the wall", "go around the wall and push the button",
         "push the button blocked by the wall", "press the front button past the wall",
         "reach around the wall to press the button"),
        ("poke the button hidden behind the barrier", "get past the wall and jab the button"),
    ),
    "coffee-button-v3": (
        ("press the coffee machine button", "push the button on the coffee maker",
         "start the coffee machine", "turn on the coffee machine", "press the button to make coffee"),
        ("brew a coffee with the machine's button", "switch the coffee maker on"),
    ),
    "coffee-pull-v3": (
        ("pull the mug out of the coffee machine", "take the cup away from the coffee maker",
         "slide the mug back from the machine", "pull the coffee cup toward you",
         "remove the mug from under the coffee machine"),
        ("drag the cup out from the coffee maker", "retrieve the mug from the machine"),
    ),
    "coffee-push-v3": (
        ("push the mug under the coffee machine", "slide the cup into the coffee maker",
         "move the mug below the coffee spout", "push the coffee cup to the machine",
         "place the mug under the coffee maker"),
        ("shove the cup beneath the coffee machine", "get the mug under the spout"),
    ),
    "dial-turn-v3": (
        ("turn the dial", "rotate the knob", "spin the dial around", "twist the dial",
         "turn the knob half a circle"),
        ("crank the dial around", "swivel the knob"),
    ),
    "disassemble-v3": (
        ("take the ring off the peg", "lift the nut off the peg", "remove the nut from the peg",
         "pull the ring up off the peg", "disassemble the nut from the peg"),
        ("unmount the round nut from the peg", "pick the ring off its peg"),
    ),
    "door-close-v3": (
        ("close the door", "push the door shut", "swing the door closed", "shut the door",
         "close the open door"),
        ("push the door back until it shuts", "get the door closed"),
    ),
    "door-lock-v3": (
        ("lock the door", "turn the door lock", "rotate the lock down to lock the door",
         "press the lock to lock the door", "secure the door lock"),
        ("flip the latch to lock the door", "set the door's lock"),
    ),
    "door-open-v3": (
        ("open the door", "pull the door open", "swing the door open", "open the door by its handle",
         "pull the door handle to open it"),
        ("get the door open", "draw the door open with the handle"),
    ),
    "door-unlock-v3": (
        ("unlock the door", "turn the lock to unlock the door", "rotate the door lock open",
         "release the door lock", "undo the lock on the door"),
        ("flip the latch to unlock the door", "open the door's lock"),
    ),
    "hand-insert-v3": (
        ("put the gripper into the hole", "insert the hand in the hole", "move the gripper down into the hole",
         "reach into the hole in the table", "place the hand inside the hole"),
        ("dip the gripper into the opening", "stick the hand into the hole"),
    ),
    "drawer-close-v3": (
        ("close the drawer", "push the drawer shut", "slide the drawer closed", "shut the drawer",
         "push the drawer in"),
        ("slam the drawer closed", "get the drawer shut"),
    ),
    "drawer-open-v3": (
        ("open the drawer", "pull the drawer open", "slide the drawer out", "pull out the drawer",
         "open the drawer by its handle"),
        ("draw the drawer out", "get the drawer open"),
    ),
    "faucet-open-v3": (
        ("turn on the faucet", "open the tap", "rotate the faucet handle to open it",
         "turn the faucet on", "open the faucet"),
        ("get the water running", "twist the tap open"),
    ),
    "faucet-close-v3": (
        ("turn off the faucet", "close the tap", "rotate the faucet handle to close it",
         "turn the faucet off", "close the faucet"),
        ("stop the water", "twist the tap shut"),
    ),
    "hammer-v3": (
        ("hammer the nail in", "use the hammer to drive the nail", "pick up the hammer and hit the nail",
         "knock the nail into the wall", "hammer the peg into the wall"),
        ("pound the nail with the hammer", "strike the nail using the hammer"),
    ),
    "handle-press-side-v3": (
        ("press the handle down from the side", "push the side handle down",
         "press down the handle on the side", "lower the handle from the side",
         "push the handle down sideways"),
        ("bear down on the sideways handle", "depress the handle from its side"),
    ),
    "handle-press-v3": (
        ("press the handle down", "push the handle down", "press down on the handle",
         "lower the handle", "push down the handle"),
        ("bear down on the handle", "depress the handle"),
    ),
    "handle-pull-side-v3": (
        ("pull the handle up from the side", "lift the side handle", "pull up the handle on the side",
         "raise the handle from the side", "pull the handle up sideways"),
        ("yank the sideways handle upward", "hoist the handle from its side"),
    ),
    "handle-pull-v3": (
        ("pull the handle up", "lift the handle", "pull up on the handle", "raise the handle",
         "pull the handle upward"),
        ("yank the handle up", "hoist the handle"),
    ),
    "lever-pull-v3": (
        ("pull the lever", "lift the lever up", "pull the lever up", "raise the lever",
         "rotate the lever upward"),
        ("flip the lever up", "swing the lever upward"),
    ),
    "peg-insert-side-v3": (
        ("insert the peg into the hole", "put the peg in the hole from the side",
         "push the peg sideways into the hole", "pick up the peg and insert it", "plug the peg into the box"),
        ("slot the peg into the side opening", "fit the peg into the hole"),
    ),
    "pick-place-wall-v3": (
        ("pick up the puck and place it past the wall", "move the puck over the wall to the goal",
         "lift the puck over the wall and put it down at the target", "carry the puck across the wall",
         "place the puck on the other side of the wall"),
        ("hoist the disc over the barrier onto the goal", "bring the puck over the wall to its spot"),
    ),
    "pick-out-of-hole-v3": (
        ("pick the puck out of the hole", "lift the puck from the hole", "take the puck out of the hole",
         "grab the puck in the hole and lift it", "remove the puck from the hole"),
        ("fish the disc out of the hole", "retrieve the puck from the hole"),
    ),
    "reach-v3": (
        ("reach the goal", "move the gripper to the target", "reach for the goal position",
         "move the hand to the goal", "go to the target point"),
        ("bring the gripper to the marked spot", "touch the goal location"),
    ),
    "push-back-v3": (
        ("pull the puck back to the goal", "drag the puck toward the robot",
         "slide the puck backward to the target", "pull the puck to the goal",
         "move the puck back to the target"),
        ("bring the disc back toward the base", "draw the puck back onto the goal"),
    ),
    "push-v3": (
        ("push the puck to the goal", "slide the puck to the target", "push the puck forward to the goal",
         "move the puck to the target by pushing", "push the puck onto the goal"),
        ("shove the disc to the marked spot", "nudge the puck over to the goal"),
    ),
    "pick-place-v3": (
        ("pick up the puck and place it at the goal", "move the puck to the target in the air",
         "lift the puck and put it at the target", "grasp the puck and bring it to the goal",
         "pick and place the puck"),
        ("grab the disc and set it at the marked spot", "carry the puck up to the goal"),
    ),
    "plate-slide-v3": (
        ("slide the plate into the cabinet", "push the plate into the goal", "slide the plate forward into the net",
         "push the plate into the cabinet", "move the plate into the goal"),
        ("shove the plate into the slot", "glide the plate into the cabinet"),
    ),
    "plate-slide-side-v3": (
        ("slide the plate sideways into the cabinet", "push the plate into the cabinet from the side",
         "slide the plate to the side into the goal", "push the plate sideways into the net",
         "move the plate sideways into the cabinet"),
        ("shove the plate laterally into the slot", "glide the plate sideways into the cabinet"),
    ),
    "plate-slide-back-v3": (
        ("slide the plate out of the cabinet", "pull the plate back out of the goal",
         "take the plate out of the cabinet", "drag the plate back from the cabinet",
         "pull the plate out of the net"),
        ("retrieve the plate from the slot", "draw the plate back out of the cabinet"),
    ),
    "plate-slide-back-side-v3": (
        ("slide the plate sideways out of the cabinet", "pull the plate out of the cabinet to the side",
         "drag the plate sideways out of the goal", "take the plate out sideways",
         "slide the plate out to the side"),
        ("retrieve the plate laterally from the slot", "draw the plate sideways out of the cabinet"),
    ),
    "peg-unplug-side-v3": (
        ("unplug the peg", "pull the peg out of the hole", "pull the plug out sideways",
         "remove the peg from the socket", "unplug the peg from the side"),
        ("yank the plug out of its socket", "extract the peg from the hole"),
    ),
    "soccer-v3": (
        ("kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball",
         "move the ball into the goal", "roll the soccer ball into the net"),
        ("put the football in the goal", "knock the ball into the net"),
    ),
    "stick-push-v3": (
        ("use the stick to push the box", "grab the stick and push the box with it",
         "push the box using the stick", "pick up the stick and shove the box", "push the box with a stick"),
        ("nudge the box along with the stick", "wield the stick to move the box away"),
    ),
    "stick-pull-v3": (
        ("use the stick to pull the box", "grab the stick and pull the box with it",
         "pull the box using the stick", "pick up the stick and drag the box", "pull the box with a stick"),
        ("hook the box with the stick and draw it closer", "wield the stick to bring the box back"),
    ),
    "push-wall-v3": (
        ("push the puck around the wall to the goal", "slide the puck past the wall to the target",
         "push the puck to the goal behind the wall", "move the puck around the wall by pushing",
         "push the puck past the wall"),
        ("shove the disc around the barrier to the marked spot", "nudge the puck past the wall to the goal"),
    ),
    "reach-wall-v3": (
        ("reach the goal behind the wall", "move the gripper over the wall to the target",
         "reach over the wall to the goal", "move the hand past the wall to the goal",
         "go around the wall to the target point"),
        ("bring the gripper past the barrier to the marked spot", "touch the goal beyond the wall"),
    ),
    "shelf-place-v3": (
        ("put the block on the shelf", "place the cube on the shelf", "pick up the block and put it on the shelf",
         "move the cube onto the shelf", "lift the block onto the shelf"),
        ("set the block up on the shelf", "store the cube on the shelf"),
    ),
    "sweep-into-v3": (
        ("sweep the puck into the hole", "push the puck into the hole", "slide the puck into the hole",
         "sweep the block into the goal hole", "brush the puck into the hole"),
        ("knock the disc into the opening", "guide the puck into the hole"),
    ),
    "sweep-v3": (
        ("sweep the puck off the table", "push the puck off the edge", "slide the puck off the table",
         "sweep the block off the table", "brush the puck over the edge"),
        ("knock the disc off the table", "clear the puck from the table"),
    ),
    "window-open-v3": (
        ("open the window", "slide the window open", "push the window open", "slide the window to open it",
         "open the sliding window"),
        ("get the window open", "glide the window pane open"),
    ),
    "window-close-v3": (
        ("close the window", "slide the window shut", "push the window closed", "slide the window to close it",
         "close the sliding window"),
        ("get the window shut", "glide the window pane closed"),
    ),
}

_CHARSET = string.ascii_letters + string.digits + " .,:;'-!?()"


def _preload_triton() -> None:
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton install only loses the workaround
        pass


def configure_gl() -> str:
    """Choose MuJoCo's OpenGL backend before MuJoCo is first imported; returns ``MUJOCO_GL``.

    Keeps an explicit ``MUJOCO_GL``; else ``egl`` if libEGL is found, else ``osmesa`` if libOSMesa
    is found (else MuJoCo's default). Has no effect once ``mujoco`` is imported.

    Also loads Triton's native library first when it is installed (torch pulls it in lazily, e.g.
    when diffusers is imported). Measured here: a process that rendered with Mesa (EGL llvmpipe or
    OSMesa, both load LLVM) and then loads ``triton._C.libtriton`` (which bundles its own LLVM)
    segfaults; in the opposite order both work. Evaluating a diffusion policy after collecting
    Meta-World demos in one process hit exactly this.
    """
    _preload_triton()
    if "MUJOCO_GL" not in os.environ:
        if "mujoco" in sys.modules:
            if not os.environ.get("DISPLAY"):
                warnings.warn(
                    "metaworld: mujoco was imported before MUJOCO_GL was set and there is no DISPLAY, so "
                    "offscreen rendering will likely fail; set MUJOCO_GL=egl (or osmesa) before importing "
                    "mujoco, or call eval.sim.suites.metaworld.configure_gl() first",
                    RuntimeWarning,
                    stacklevel=3,
                )
        elif ctypes.util.find_library("EGL"):
            os.environ["MUJOCO_GL"] = "egl"
        elif ctypes.util.find_library("OSMesa"):
            os.environ["MUJOCO_GL"] = "osmesa"
    return os.environ.get("MUJOCO_GL", "")


def _benchmarks() -> dict[str, tuple[str, ...]]:
    configure_gl()
    from metaworld.env_dict import MT10_V3, MT50_V3

    return {"MT10": tuple(MT10_V3), "MT50": tuple(MT50_V3)}


def instructions_for(task: str, split: str) -> list[str]:
    """Paraphrases of ``task`` for ``split`` ("train" or "heldout")."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"metaworld: no instructions for task {task!r}; known: {sorted(INSTRUCTIONS)}")
    train, heldout = INSTRUCTIONS[task]
    return list(train if split == "train" else heldout)


# --------------------------------------------------------------------------------------------
# simulator core (reusable across env objects)
# --------------------------------------------------------------------------------------------


def _close_if_alive(ref: "weakref.ReferenceType[_SimCore]") -> None:
    core = ref()
    if core is not None:
        core.close()


class _SimCore:
    """One Meta-World task simulator + its GL renderer + camera bookkeeping.

    ``mw``: the ``SawyerXYZEnv`` subclass instance (MT convention, seeded random start states).
    """

    def __init__(self, task: str, image_size: int, cameras: Sequence[str]) -> None:
        configure_gl()
        import mujoco
        from metaworld.env_dict import ENV_CLS_MAP

        self.task = task
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mw = ENV_CLS_MAP[task](render_mode=None)
        # MT convention: the goal is part of the raw observation.
        mw._partially_observable = False
        if "sawyer_observation_space" in mw.__dict__:
            del mw.sawyer_observation_space  # cached_property: recompute with the goal bounds
        mw._freeze_rand_vec = False  # draw a new start state at every reset ...
        mw.seeded_rand_vec = True  # ... from mw.np_random (not the global numpy RNG)
        mw._set_task_called = True
        self.mw = mw
        model = mw.model
        known = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        bad = [c for c in cameras if c not in known]
        if bad:
            raise ValueError(f"metaworld: unknown camera(s) {bad}; known: {known}")
        self.cam_ids = [known.index(c) for c in cameras]
        self.cam_pos0 = model.cam_pos[self.cam_ids].copy()
        # fast software rendering: no multisampling (read when the GL context is made), no shadows,
        # reflections, skybox or haze (scene flags).
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), image_size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), image_size)
        self.renderer = mujoco.Renderer(model, image_size, image_size)
        flags = self.renderer.scene.flags
        for f in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX", "mjRND_HAZE"):
            flags[getattr(mujoco.mjtRndFlag, f)] = 0
        mujoco.mj_forward(model, mw.data)
        # A camera whose image-up axis (2nd column of its frame) points down is upside down.
        self.rotate180 = [bool(mw.data.cam_xmat[i].reshape(3, 3)[2, 1] < 0.0) for i in self.cam_ids]
        self._seg = False
        self._mujoco = mujoco
        self._closed = False
        # Free the GL context before EGL itself is torn down at interpreter exit (MuJoCo's EGL
        # module registers eglTerminate with atexit on import, i.e. before this, so this runs
        # first). The hook holds only a weak reference: an unclosed, unreferenced core is freed
        # by the garbage collector as usual.
        self._atexit_hook = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit_hook)

    def render(self, segmentation: bool = False) -> np.ndarray:
        """Upright views, uint8 (V, S, S, 3); with ``segmentation``, int32 (V, S, S, 2) holding
        (object id, object type) per pixel (MuJoCo's segmentation render)."""
        r = self.renderer
        if segmentation != self._seg:
            (r.enable_segmentation_rendering if segmentation else r.disable_segmentation_rendering)()
            self._seg = segmentation
        views = []
        for cid, rot in zip(self.cam_ids, self.rotate180):
            r.update_scene(self.mw.data, camera=cid)
            img = r.render()
            views.append(img[::-1, ::-1] if rot else img)
        return np.stack(views)

    def restore_cameras(self) -> None:
        self.mw.model.cam_pos[self.cam_ids] = self.cam_pos0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit_hook)
        try:
            self.renderer.close()
        finally:
            self.mw.close()


# --------------------------------------------------------------------------------------------
# the env
# --------------------------------------------------------------------------------------------


class MetaWorldEnv(gym.Env):
    """One Meta-World task (see the module docstring). ``render()`` returns the first camera's
    current frame, (S, S, 3) uint8; ``raw_obs`` is the last raw Meta-World observation (39,)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        core: _SimCore,
        image_size: int,
        max_episode_steps: int,
        state_mode: str,
        instructions: list[str],
        seed: int | None = None,
        release: Callable[[_SimCore], None] | None = None,
        displace_at_step: int | None = None,
        displace_scale: float = 0.05,
    ) -> None:
        self.core = core
        self.task = core.task
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.state_mode = state_mode
        self.instruction_choices = list(instructions)
        self.render_mode = "rgb_array"
        self.displace_at_step = displace_at_step
        self.displace_scale = float(displace_scale)
        self._release = release
        self._init_seed = seed
        self._seeded = False
        self._closed = False
        self.num_views = len(core.cam_ids)
        s = self.image_size
        img_shape = (3, s, s) if self.num_views == 1 else (self.num_views, 3, s, s)
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, img_shape, np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (STATE_MODES[state_mode],), np.float32),
                "instruction": spaces.Text(max_length=256, min_length=1, charset=_CHARSET),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        if self.max_episode_steps > core.mw.max_path_length:
            core.mw.max_path_length = self.max_episode_steps  # Meta-World raises past its own limit
        self.raw_obs = np.zeros(RAW_OBS_DIM, np.float64)
        self.instruction = self.instruction_choices[0]
        self.last_displacement: np.ndarray | None = None
        self._views = np.zeros((self.num_views, s, s, 3), np.uint8)
        self._steps = 0
        self._displace_rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ observations
    def _state(self) -> np.ndarray:
        raw = self.raw_obs
        if self.state_mode == "proprio":
            return raw[:4].astype(np.float32)
        if self.state_mode == "proprio_object":
            return raw[:18].astype(np.float32)
        return raw.astype(np.float32)

    def _obs(self) -> dict[str, Any]:
        self._views = self.core.render()
        img = np.ascontiguousarray(self._views.transpose(0, 3, 1, 2))  # (V, 3, S, S)
        return {
            "image": img[0] if self.num_views == 1 else img,
            "state": self._state(),
            "instruction": self.instruction,
        }

    def render(self) -> np.ndarray:
        """The first camera's current frame, uint8 (S, S, 3) (no re-render)."""
        return self._views[0].copy()

    def render_views(self, segmentation: bool = False) -> np.ndarray:
        """Re-render every camera: uint8 (V, S, S, 3), or with ``segmentation`` int32
        (V, S, S, 2) = (MuJoCo object id, object type) per pixel, in the same upright orientation."""
        self._check_open()
        return self.core.render(segmentation=segmentation)

    @property
    def mw(self) -> Any:
        """The underlying Meta-World env (``SawyerXYZEnv``), for privileged access."""
        return self.core.mw

    # ------------------------------------------------------------------ gym API
    def _check_open(self) -> None:
        if self._closed:  # its simulator may already serve another env (the suite's pool)
            raise RuntimeError(f"metaworld: the env for {self.task!r} is closed")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._check_open()
        if seed is None and not self._seeded:
            seed = self._init_seed
        super().reset(seed=seed)
        self._seeded = True
        mw = self.core.mw
        self.core.restore_cameras()
        mw.seed(int(self.np_random.integers(2**31 - 1)))  # start state comes from mw.np_random
        self._displace_rng = np.random.default_rng(int(self.np_random.integers(2**31 - 1)))
        k = int(self.np_random.integers(len(self.instruction_choices)))
        self.instruction = self.instruction_choices[k]
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        raw, _ = mw.reset()
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._steps = 0
        self.last_displacement = None
        info = {"is_success": False, "task": self.task, "step": 0}
        return self._obs(), info

    def step(self, action):
        self._check_open()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"metaworld: action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"metaworld: non-finite action {a.tolist()}")
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        raw, reward, _, _, mw_info = self.core.mw.step(a)
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._steps += 1
        success = bool(mw_info.get("success", 0.0))
        info = dict(mw_info)
        info.update(is_success=success, task=self.task, step=self._steps)
        terminated = success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        if self.displace_at_step is not None and self._steps == self.displace_at_step and not (terminated or truncated):
            self.displace_object(self._displace_rng, self.displace_scale)
            info["displacement"] = self.last_displacement
        return self._obs(), float(reward), terminated, truncated, info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release(self.core)
        else:
            self.core.close()

    # ------------------------------------------------------------------ perturbations
    def displace_object(self, rng: np.random.Generator, scale: float = 0.05) -> np.ndarray:
        """Perturbation hook: move the task's main object by about ``scale`` m (module docstring).

        Main object: the non-robot jointed body nearest to Meta-World's object position
        ``raw_obs[4:7]`` (its subtree's bodies and geoms count). A free body moves by ``scale`` in a
        random horizontal direction (clipped to the table); a hinged / sliding body moves along its
        joint(s) by an arc of ``scale`` m at the object position, in a random direction or the
        opposite one if that moves farther within the joint range. The reach tasks move their goal
        instead. Velocities of the moved joints are zeroed; the raw observation is refreshed, the
        images update at the next ``step``.

        Returns the new main-object position (3,) (``raw_obs[4:7]``; the goal for the reach
        tasks). ``last_displacement`` holds the applied qpos (or goal) change.
        """
        self._check_open()
        mujoco = self.core._mujoco
        mw = self.core.mw
        m, d = mw.model, mw.data
        scale = float(scale)
        ang = rng.uniform(0.0, 2.0 * np.pi)
        dxy = scale * np.array([np.cos(ang), np.sin(ang)])
        if self.task in _REACH_TASKS:
            goal = np.asarray(mw._target_pos, np.float64).copy()
            new = goal.copy()
            new[:2] = np.clip(goal[:2] + dxy, TABLE_XY_LOW, TABLE_XY_HIGH)
            mw._target_pos = new
            mw._set_pos_site("goal", new)
            self.last_displacement = new - goal
        else:
            obj = np.asarray(self.raw_obs[4:7], np.float64)
            joints = self._main_object_joints(obj)
            qpos, qvel = d.qpos.copy(), d.qvel.copy()
            sign = 1.0 if np.cos(ang) >= 0 else -1.0
            n_dof = sum(m.jnt_type[j] != mujoco.mjtJoint.mjJNT_FREE for j in joints)
            for j in joints:
                adr, vadr = int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])
                if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
                    qpos[adr : adr + 2] = np.clip(qpos[adr : adr + 2] + dxy, TABLE_XY_LOW, TABLE_XY_HIGH)
                    qvel[vadr : vadr + 6] = 0.0
                    continue
                off = sign * scale / np.sqrt(n_dof)  # e.g. the plate's x and y slides: |move| = scale
                if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE:  # arc length -> angle
                    rel = obj - d.xanchor[j]
                    axis = d.xaxis[j]
                    radius = float(np.linalg.norm(rel - rel.dot(axis) * axis))
                    off /= max(radius, MIN_HINGE_RADIUS)
                v = qpos[adr]
                if m.jnt_limited[j]:  # the random direction unless the other one moves farther
                    a, b = np.clip([v + off, v - off], *m.jnt_range[j])
                    qpos[adr] = a if abs(a - v) >= abs(b - v) else b
                else:
                    qpos[adr] = v + off
                qvel[vadr] = 0.0
            self.last_displacement = qpos - d.qpos
            d.qpos[:] = qpos
            d.qvel[:] = qvel
            mujoco.mj_forward(m, d)
        space = mw.sawyer_observation_space
        self.raw_obs = np.clip(mw._get_obs(), space.low, space.high).astype(np.float64)
        return (mw._target_pos if self.task in _REACH_TASKS else self.raw_obs[4:7]).copy()

    def _main_object_joints(self, obj_pos: np.ndarray) -> list[int]:
        """Joints of the non-robot jointed body whose subtree (bodies + geoms) is nearest ``obj_pos``."""
        mujoco = self.core._mujoco
        m, d = self.core.mw.model, self.core.mw.data
        by_body: dict[int, list[int]] = {}
        for j in range(m.njnt):
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or ""
            if not name.startswith(_ROBOT_JOINT_PREFIXES):
                by_body.setdefault(int(m.jnt_bodyid[j]), []).append(j)
        if not by_body:
            raise RuntimeError(f"metaworld: task {self.task!r} has no object to displace")
        parent = m.body_parentid
        best, best_dist = None, np.inf
        for b in by_body:
            sub = [c for c in range(m.nbody) if self._in_subtree(c, b, parent)]
            pts = [d.xpos[c] for c in sub] + [d.geom_xpos[g] for g in range(m.ngeom) if m.geom_bodyid[g] in sub]
            dist = min(float(np.linalg.norm(p - obj_pos)) for p in pts)
            if dist < best_dist:
                best, best_dist = b, dist
        return by_body[best]

    @staticmethod
    def _in_subtree(body: int, root: int, parent: np.ndarray) -> bool:
        while True:
            if body == root:
                return True
            if body == 0:
                return False
            body = int(parent[body])

    def set_camera_offset(self, offset: Sequence[float] | None) -> None:
        """Shift every observation camera by ``offset`` (3,) m in its parent frame (world for the
        fixed cameras); ``None`` restores the original poses. Reset also restores them."""
        self._check_open()
        self.core.restore_cameras()
        if offset is not None:
            off = np.asarray(offset, np.float64).reshape(-1)
            if off.shape != (3,):
                raise ValueError(f"metaworld: camera offset must have shape (3,), got {np.shape(offset)}")
            self.core.mw.model.cam_pos[self.core.cam_ids] += off
        self.core._mujoco.mj_forward(self.core.mw.model, self.core.mw.data)  # camera poses in data


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------


@dataclass
class MetaWorldConfig:
    """Options of :class:`MetaWorldSuite` (see the module docstring)."""

    benchmark: str = "MT10"
    image_size: int = 64
    cameras: tuple[str, ...] = ("corner2",)
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    state_mode: str = "proprio"
    reuse_envs: bool = True
    displace_at_step: int | None = None
    displace_scale: float = 0.05
    heldout_tasks: tuple[str, ...] = field(default_factory=lambda: HELDOUT_TASKS)

    def validate(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"metaworld: unknown benchmark {self.benchmark!r}; known: {list(BENCHMARKS)}")
        if self.state_mode not in STATE_MODES:
            raise ValueError(f"metaworld: unknown state_mode {self.state_mode!r}; known: {list(STATE_MODES)}")
        if self.image_size < 8:
            raise ValueError(f"metaworld: image_size must be >= 8, got {self.image_size}")
        if not self.cameras:
            raise ValueError("metaworld: cameras must name at least one camera")
        if self.max_episode_steps < 1:
            raise ValueError(f"metaworld: max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.displace_at_step is not None and self.displace_at_step < 1:
            raise ValueError(f"metaworld: displace_at_step must be >= 1 or None, got {self.displace_at_step}")


@register_suite("metaworld")
class MetaWorldSuite(Suite):
    """Meta-World MT10 / MT50 (see the module docstring)."""

    name = "metaworld"
    action_dim = ACTION_DIM

    def __init__(
        self,
        benchmark: str = "MT10",
        image_size: int = 64,
        cameras: Sequence[str] | str = ("corner2",),
        max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
        state_mode: str = "proprio",
        reuse_envs: bool = True,
        displace_at_step: int | None = None,
        displace_scale: float = 0.05,
    ) -> None:
        cams = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        self.cfg = MetaWorldConfig(
            benchmark=str(benchmark),
            image_size=int(image_size),
            cameras=cams,
            max_episode_steps=int(max_episode_steps),
            state_mode=str(state_mode),
            reuse_envs=bool(reuse_envs),
            displace_at_step=None if displace_at_step is None else int(displace_at_step),
            displace_scale=float(displace_scale),
        )
        self.cfg.validate()
        self.benchmark = self.cfg.benchmark
        self.image_size = self.cfg.image_size
        self.cameras = self.cfg.cameras
        self.num_views = len(cams)
        self.max_episode_steps = self.cfg.max_episode_steps
        self.state_mode = self.cfg.state_mode
        self.state_dim = STATE_MODES[self.state_mode]
        self._tasks = _benchmarks()[self.benchmark]
        self._pool: dict[str, list[_SimCore]] = {}

    @property
    def make_kwargs(self) -> dict[str, Any]:
        """The ``make_suite("metaworld", **kwargs)`` arguments that rebuild this suite (env workers)."""
        c = self.cfg
        return {
            "benchmark": c.benchmark,
            "image_size": c.image_size,
            "cameras": list(c.cameras),
            "max_episode_steps": c.max_episode_steps,
            "state_mode": c.state_mode,
            "reuse_envs": c.reuse_envs,
            "displace_at_step": c.displace_at_step,
            "displace_scale": c.displace_scale,
        }

    # ------------------------------------------------------------------ tasks / language
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def heldout_tasks(self) -> list[str]:
        """Tasks held out from training for task generalization (module docstring)."""
        return list(self.cfg.heldout_tasks)

    def train_tasks(self) -> list[str]:
        """``task_names()`` without the held-out tasks (all of MT10; 45 tasks of MT50)."""
        held = set(self.cfg.heldout_tasks)
        return [t for t in self._tasks if t not in held]

    def check_task(self, task: str) -> None:
        names = self.task_names() + [t for t in self.heldout_tasks() if t not in self._tasks]
        if task not in names:
            raise ValueError(
                f"suite {self.name!r} ({self.benchmark}): unknown task {task!r}; known tasks: {names}"
            )

    def instructions(self, task: str, split: str = "train") -> list[str]:
        self.check_task(task)
        self.check_split(split)
        return instructions_for(task, split)

    # ------------------------------------------------------------------ envs
    def _acquire(self, task: str) -> _SimCore:
        idle = self._pool.get(task)
        if idle:
            return idle.pop()
        return _SimCore(task, self.image_size, self.cameras)

    def _release(self, core: _SimCore) -> None:
        idle = self._pool.setdefault(core.task, [])
        if len(idle) < _MAX_IDLE_PER_TASK:
            core.restore_cameras()
            idle.append(core)
        else:
            core.close()

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> MetaWorldEnv:
        self.check_task(task)
        instr = self.instructions(task, split)
        core = self._acquire(task)
        return MetaWorldEnv(
            core,
            image_size=self.image_size,
            max_episode_steps=self.max_episode_steps,
            state_mode=self.state_mode,
            instructions=instr,
            seed=seed,
            release=self._release if self.cfg.reuse_envs else None,
            displace_at_step=self.cfg.displace_at_step,
            displace_scale=self.cfg.displace_scale,
        )

    def close(self) -> None:
        """Free the pooled simulators / GL renderers."""
        for cores in self._pool.values():
            for c in cores:
                c.close()
        self._pool.clear()

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(ACTION_DIM, -1.0, np.float32), np.full(ACTION_DIM, 1.0, np.float32)

    # ------------------------------------------------------------------ expert
    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """Meta-World's scripted policy for ``task`` on ``env.raw_obs`` (39,), plus
        N(0, noise^2) per action dim (seeded by ``seed``), clipped to [-1, 1]; returns float32 (4,)."""
        self.check_task(task)
        configure_gl()
        from metaworld.policies import ENV_POLICY_MAP

        policy = ENV_POLICY_MAP[task]()
        rng = np.random.default_rng(seed)
        noise = float(noise)

        def act(obs: dict, env: Any) -> np.ndarray:
            raw = env.unwrapped.raw_obs
            with warnings.catch_warnings():  # the policies warn about their own large gains
                warnings.simplefilter("ignore")
                a = np.asarray(policy.get_action(raw), np.float64)
            if noise > 0:
                a = a + rng.normal(0.0, noise, size=ACTION_DIM)
            return np.clip(a, -1.0, 1.0).astype(np.float32)

        return act
