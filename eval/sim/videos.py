"""Rollout videos: mp4 (libx264 through imageio's PyAV plugin; PyAV is a project dependency) with a
GIF fallback, frames upscaled to at least 128 px and padded to even sizes, written atomically."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from vla_ebt.config_io import atomic_path

__all__ = ["write_video"]


def _video_frames(frames: list[np.ndarray], min_side: int = 128) -> list[np.ndarray]:
    """Upscale (nearest) small frames to about ``min_side`` px; uint8 (H, W, 3) each."""
    up = max(1, min_side // max(1, frames[0].shape[0]))
    return [np.ascontiguousarray(np.repeat(np.repeat(np.asarray(f, np.uint8), up, 0), up, 1)) for f in frames]


def _write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """H.264 mp4 through imageio's PyAV plugin (``av`` is a project dependency); frames are
    padded to even sizes (yuv420p). Falls back to imageio-ffmpeg when PyAV is unavailable."""
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = [np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge") for f in frames]

    with atomic_path(path) as tmp:  # keeps the .mp4 suffix: the writers pick the container from it
        try:
            import av  # noqa: F401
            import imageio.v3 as iio

            iio.imwrite(tmp, np.stack(frames), plugin="pyav", codec="libx264", fps=fps)
        except ImportError:
            import imageio.v2 as imageio  # needs imageio-ffmpeg

            imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1)


def write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> str:
    """Write ``frames`` (uint8 (H, W, 3) each) as ``path`` (.gif or .mp4) atomically. An mp4 that
    cannot be encoded falls back to a GIF next to it (with a warning); returns the written path."""
    import imageio.v2 as imageio

    frames = _video_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        try:
            _write_mp4(frames, path, fps)
            return str(path)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"evaluate: mp4 encoding failed ({type(e).__name__}: {e}); writing a GIF instead",
                          stacklevel=2)
            path = path.with_suffix(".gif")
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
    return str(path)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

