"""OpenGL backend choice for MuJoCo, made before MuJoCo is first imported (docs/suites.md,
"Meta-World: rendering")."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
import warnings

__all__ = ["configure_gl"]


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

    Also loads Triton's native library first when it is installed: a process that rendered with
    Mesa (which loads LLVM) and then loads Triton (which bundles its own LLVM) segfaults, the
    opposite order works (docs/suites.md).
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
