"""Animation from video in real Blender: the backend tracks a small clip, the rig is keyed in a new action."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import ADDON, backend_run

CLIP_CODE = """
import sys, cv2
from backend.tracking.video_bench import performance_clip
frames = performance_clip(8, 192)
w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*"mp4v"), float(sys.argv[2]), (192, 192))
for f in frames:
    w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
w.release()
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("clip") / "performance.mp4"
    backend_run(CLIP_CODE, str(p), "24")
    return p


def test_animation_from_video_keys_a_new_action(scene, clip):
    import importlib

    rp = importlib.import_module(f"{ADDON}.blender.rig_params")
    assert bpy.ops.mvp4d.add_rig(source="TOY") == {"FINISHED"}
    rig = scene.mvp4d.rig
    keys = rig.data.shape_keys
    # the artist's own animation, which must survive
    keys.key_blocks["smile"].value = 0.7
    keys.key_blocks["smile"].keyframe_insert("value", frame=1)
    artist_action = keys.animation_data.action
    artist_name = artist_action.name
    scene.render.fps, scene.render.fps_base = 24, 1.0

    res = bpy.ops.mvp4d.animation_from_video(filepath=str(clip), wait=True)
    m = scene.mvp4d
    assert res == {"FINISHED"}, (m.last_error, m.last_hint)
    out = Path(m.job_dir)
    with np.load(out / "animation.npz") as z:
        anim = {k: np.asarray(z[k]) for k in z.files}
    T = anim["expr"].shape[0]
    assert T == 8
    # a new action, named after the clip; the artist's is kept (fake user) with its key
    new_action = keys.animation_data.action
    assert new_action is not None and new_action != artist_action and "performance" in new_action.name
    kept = bpy.data.actions.get(artist_name)
    assert kept is not None and kept.use_fake_user
    # the rig follows the tracked values frame by frame
    frames = np.arange(scene.frame_start, scene.frame_start + T, dtype=float)
    seq = rp.read_sequence(rig, frames)
    np.testing.assert_allclose(seq["expr"][:, :anim["expr"].shape[1]], np.clip(anim["expr"], -5, 5), atol=1e-4)
    np.testing.assert_allclose(seq["jaw_pose"], anim["jaw_pose"], atol=1e-4)
    # the next Generate drives the avatar with it
    assert (m.animation_source, m.frame_start, m.frame_end) == ("RIG", scene.frame_start, scene.frame_start + T - 1)


def test_animation_from_video_bad_clip_is_reported(scene, tmp_path):
    assert bpy.ops.mvp4d.add_rig(source="TOY") == {"FINISHED"}
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2048)
    with pytest.raises(RuntimeError, match="not a video"):
        bpy.ops.mvp4d.animation_from_video(filepath=str(bad), wait=True)
    assert scene.mvp4d.last_error.startswith("[BAD_INPUT]")
