"""``python -m backend track-video``: a performance clip -> the avatar's animation (FLAME per frame).

Reads the clip (:mod:`.video_reader`), finds MediaPipe landmarks with the detector's tracking between
frames (:mod:`.video_landmarks`), fits FLAME to all frames at once (:mod:`.video_fit`) and writes, in
the output folder:

======================  =====================================================================
``animation.npz``       the animation (``protocol.ANIMATION_KEYS`` + ``shape``) at the output fps:
                        ``generate --animation`` and the Blender add-on take it as is
``tracking.json``       the clip, the options, fps in/out, per-frame fit errors, the frames
                        without a face (filled from neighbours) and timings
``contact_sheet.png``   evenly spaced frames with detected (green) and fitted (red) landmarks
``landmarks.npz``       the detections (the checkpoint a cancelled run resumes from)
``events.jsonl``        the events of the run (also on stdout)
======================  =====================================================================

Runs like a job: it holds the folder's lock, stops at the next frame on SIGTERM/SIGINT or a
``cancel`` file, and a rerun with the same clip and trim resumes detection where it stopped.
Every file is written atomically; a folder holding other files is refused (``OUTPUT_EXISTS``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, MVP4DError, bad_input
from ..events import CancelToken, EventSink
from ..fsutil import atomic_path, check_output_folder, remove_inside, remove_partials, write_json_atomic
from ..joblock import LOCK_NAME, JobLock
from ..protocol import ADDON_RUN_FILE
from .image import save_png_atomic
from .video_reader import ClipInfo, iter_frames, open_clip

FILES = {"animation": "animation.npz", "report": "tracking.json", "sheet": "contact_sheet.png",
         "landmarks": "landmarks.npz"}
#: what may already be in the output folder: an earlier run's files and the add-on's run file
OURS = frozenset({*FILES.values(), "events.jsonl", "cancel", LOCK_NAME, "logs", ADDON_RUN_FILE})
STAGE = "track-video"
CHECKPOINT_EVERY = 50  # frames between detection checkpoints
SHEET_FRAMES = 12
POOR_FIT = 0.05  # median landmark error above this fraction of the face box: warn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend track-video",
                                description="Track FLAME in a performance clip; write the avatar's animation.")
    p.add_argument("--video", required=True, help="video file (mp4/mov/webm/...) or a folder of numbered frames")
    p.add_argument("--out", required=True, help="output folder (new, empty or an earlier track-video's)")
    p.add_argument("--flame", default="toy", help="'toy' (embedded) or a FLAME .pkl/.npz file")
    p.add_argument("--identity", default=None, help="track folder of the avatar (its shape is used as is)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the clip's)")
    p.add_argument("--folder-fps", type=float, default=None, help="frame rate of a folder of frames (default 25)")
    p.add_argument("--start", type=float, default=None, help="trim: first second to track")
    p.add_argument("--end", type=float, default=None, help="trim: second to stop at")
    p.add_argument("--smoothing", type=float, default=1.0, help="temporal smoothing, 0 = none, 1 = default")
    p.add_argument("--no-head-pose", action="store_true", help="expression only: drop head rotation/translation")
    p.add_argument("--neutral-frame", type=int, default=None,
                   help="clip frame (0-based) with the performer's resting face: subtracted from every frame")
    p.add_argument("--steps", type=int, default=100, help="optimiser iterations of the clip fit")
    return p


def _checkpoint_key(info: ClipInfo) -> np.ndarray:
    st = info.source.stat()
    return np.array([info.first, info.stop, info.width, info.height, st.st_size, int(st.st_mtime_ns // 1000)],
                    dtype=np.int64)


def _load_checkpoint(path: Path, info: ClipInfo):
    from .video_landmarks import ClipLandmarks

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as d:
            if not np.array_equal(d["key"], _checkpoint_key(info)):
                return None
        clip = ClipLandmarks.load(path)
    except Exception:  # noqa: BLE001 - a damaged checkpoint is simply redone
        return None
    return clip if clip.num_frames == info.num_selected else None


def _save_checkpoint(path: Path, clip: Any, info: ClipInfo) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, points=clip.points.astype(np.float32), found=clip.found, faces=clip.faces,
                     size=np.array([clip.width, clip.height]), key=_checkpoint_key(info))


def _contact_sheet(info: ClipInfo, picks: dict[int, np.ndarray], fit: Any, found: np.ndarray) -> np.ndarray:
    import cv2

    tiles = []
    for k in sorted(picks):
        img = np.ascontiguousarray(picks[k].copy())
        scale = 256.0 / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        for pts, colour in ((fit.target_px[k], (0, 200, 0)), (fit.projected_px[k], (230, 0, 0))):
            for u, v in pts * scale:
                cv2.circle(img, (int(round(u)), int(round(v))), 1, colour, -1, cv2.LINE_AA)
        label = f"{info.first + k}" + ("" if found[k] else " filled")
        cv2.putText(img, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    return sheet


def _ranges_text(ranges: list[tuple[int, int]], first: int) -> str:
    parts = [f"{a + first}" if a == b else f"{a + first}-{b + first}" for a, b in ranges[:8]]
    return ", ".join(parts) + (" ..." if len(ranges) > 8 else "")


def track_video(args: argparse.Namespace, out: Path, sink: EventSink, cancel: CancelToken) -> dict[str, str]:
    """The whole command under the folder's lock; returns the outputs (name -> file)."""
    t0 = time.perf_counter()
    # Two workers use the second core while this thread detects landmarks: one builds MediaPipe's graph
    # (its import and model load, ~1-5 s) so detection starts as soon as the clip is open; the other builds
    # the head model and imports the optimizer, then fits the key frame once its landmarks exist.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mvp4d-track-video") as pool:
        mesh = pool.submit(_new_face_mesh)
        model = pool.submit(_head_model, args.flame, args.identity, cancel)
        try:
            return _track_video(args, out, sink, cancel, t0, pool, mesh, model)
        finally:
            if not mesh.cancel() and mesh.exception() is None:
                mesh.result().__exit__(None, None, None)  # closed already when used: closing again is harmless


def _new_face_mesh() -> Any:
    from .video_landmarks import VideoFaceMesh

    return VideoFaceMesh()


def _head_model(flame_source: str, identity: str | None, cancel: CancelToken) -> tuple[Any, Any]:
    """The head model, the identity's shape (or None) and the optimizer's import (for the worker)."""
    from . import get_flame, load_track
    from .fit import import_optimizer

    flame = get_flame(flame_source)
    shape = None if identity is None else load_track(identity, flame).params.shape
    import_optimizer(cancel.check)
    return flame, shape


def _key_frame_fit(model: Future, points: np.ndarray, width: int, height: int, cancel: CancelToken) -> Any:
    from .video_fit import fit_key_frame

    flame, _ = model.result()
    return fit_key_frame(flame, points, width, height, cancel.check)


def _track_video(args: argparse.Namespace, out: Path, sink: EventSink, cancel: CancelToken, t0: float,
                 pool: ThreadPoolExecutor, mesh: Future, model: Future) -> dict[str, str]:
    from .video_fit import fit_clip, resample, to_animation
    from .video_landmarks import detect_clip, fill_gaps

    if args.smoothing < 0 or (args.fps is not None and not 0 < args.fps <= 1000) or args.steps < 1:
        raise bad_input("--smoothing must be >= 0, --fps in (0, 1000] and --steps >= 1")
    info = open_clip(args.video, fps=args.folder_fps, start=args.start, end=args.end)
    if args.neutral_frame is not None and not info.first <= args.neutral_frame < info.stop:
        raise bad_input(f"--neutral-frame {args.neutral_frame} is outside the tracked frames {info.first}-{info.stop - 1}",
                        "Give a frame number of the (trimmed) clip, counted from 0 at the clip's start.")
    sink.log(f"clip {info.source.name}: {info.width}x{info.height}, {info.fps:g} fps, codec {info.codec}, "
             f"frames {info.first}-{info.stop - 1}", stage=STAGE)

    # 1. landmarks (resumable)
    ckpt = out / FILES["landmarks"]
    n = info.num_selected
    picks_at = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(SHEET_FRAMES, n))})
    picks: dict[int, np.ndarray] = {}
    k0 = n // 2  # the key frame: its photo fit runs in the pool as soon as its landmarks exist
    key_fit: Future | None = None
    clip = _load_checkpoint(ckpt, info)
    if clip is not None and (clip.faces >= 0).all():
        sink.log("landmarks found by an earlier run: reused", stage=STAGE)
    else:
        begin = 0 if clip is None else int(np.argmin(clip.faces >= 0))
        if begin:
            sink.log(f"resuming landmark detection at frame {info.first + begin}", stage=STAGE)

        def frames():
            for i, rgb in iter_frames(info, info.first + begin):
                if i - info.first in picks_at:
                    picks[i - info.first] = rgb
                yield i, rgb

        state = {"clip": clip}

        def on_frame(done: int, total: int) -> None:
            nonlocal key_fit
            c = state["clip"]
            if done == k0 + 1 and c is not None and c.found[k0]:
                key_fit = pool.submit(_key_frame_fit, model, c.points[k0].copy(), info.width, info.height, cancel)
            if done % 5 == 0 or done == total:
                sink.progress(STAGE, done, total)
            if done % CHECKPOINT_EVERY == 0 and state["clip"] is not None:
                _save_checkpoint(ckpt, state["clip"], info)

        from .video_landmarks import NUM_LANDMARKS, ClipLandmarks

        if clip is None:
            clip = ClipLandmarks(points=np.full((n, NUM_LANDMARKS, 2), np.nan), found=np.zeros(n, bool),
                                 faces=np.full(n, -1, np.int64), width=info.width, height=info.height)
        state["clip"] = clip
        try:
            clip = detect_clip(frames(), n, info.width, info.height, first=info.first, start=clip,
                               on_frame=on_frame, check=cancel.check, mesh_factory=mesh.result)
        except Cancelled:
            _save_checkpoint(ckpt, state["clip"], info)
            raise
        _save_checkpoint(ckpt, clip, info)
    t_detect = time.perf_counter()
    if clip.num_frames < 2:
        raise bad_input(f"{info.source.name} yielded {clip.num_frames} readable frame(s) in the tracked range",
                        "Track a clip of at least two frames.")
    if not clip.found.any():
        raise MVP4DError("NO_FACE", f"no face was found in any of the {clip.num_frames} frames of {info.source.name}",
                         "Film one face, roughly frontal, filling at least a fifth of the frame, in good light.")
    several = int((clip.faces > 1).sum())
    if several:
        sink.warning(f"{several} frame(s) show more than one face; the largest face was tracked", stage=STAGE)
    ranges = fill_gaps(clip)
    if ranges:
        missing = int((~clip.found).sum())
        sink.warning(f"no face in {missing} of {clip.num_frames} frames ({_ranges_text(ranges, info.first)}): "
                     "filled from the neighbouring frames", stage=STAGE)

    # 2. the clip fit
    cancel.check()
    flame, shape = model.result()
    key = key_fit.result() if key_fit is not None and k0 < clip.num_frames else None
    fit = fit_clip(flame, clip.points, info.width, info.height, shape=shape, smoothing=args.smoothing,
                   key_frame=k0 if k0 < clip.num_frames else None, key=key, steps=args.steps, progress=lambda d, t: sink.progress(f"{STAGE}-fit", d, t), check=cancel.check)
    t_fit = time.perf_counter()
    neutral = None if args.neutral_frame is None else args.neutral_frame - info.first
    if neutral is not None and neutral >= clip.num_frames:
        raise bad_input(f"--neutral-frame {args.neutral_frame} is past the clip's last readable frame "
                        f"{info.first + clip.num_frames - 1}", "Give a frame inside the clip.")
    anim = to_animation(flame, fit, neutral_frame=neutral, head_pose=not args.no_head_pose)
    fps_out = float(args.fps or info.fps)
    anim = resample(anim, info.fps, fps_out)
    median_rel = float(np.median(fit.relative_errors))
    if median_rel > POOR_FIT:
        sink.warning(f"the fit is poor (median landmark error {100 * median_rel:.1f} % of the face box)", stage=STAGE)

    # 3. outputs (each atomically)
    cancel.check()
    with atomic_path(out / FILES["animation"]) as tmp:
        anim.save_npz(tmp)
    for k in [k for k in picks_at if k < clip.num_frames and k not in picks]:  # resumed: read them again
        got = next(iter_frames(info, info.first + k), None)
        if got is not None:
            picks[k] = got[1]
    picks = {k: v for k, v in picks.items() if k < clip.num_frames}
    if picks:
        save_png_atomic(out / FILES["sheet"], _contact_sheet(info, picks, fit, clip.found))
    seconds = time.perf_counter() - t0
    report = {
        "clip": info.to_json(), "fps_in": info.fps, "fps_out": fps_out, "frames_tracked": clip.num_frames,
        "frames_out": anim.num_frames, "model_id": flame.model_id,
        "options": {"smoothing": args.smoothing, "head_pose": not args.no_head_pose, "neutral_frame": args.neutral_frame,
                    "identity": None if args.identity is None else str(Path(args.identity).resolve()),
                    "steps": args.steps},
        "frames_without_face": int((~clip.found).sum()), "filled_ranges": [[a + info.first, b + info.first] for a, b in ranges],
        "frames_with_several_faces": several, "focal_px": fit.focal_px,
        "errors_px": np.round(fit.errors_px, 4).tolist(), "relative_errors": np.round(fit.relative_errors, 5).tolist(),
        "mean_error_px": float(fit.errors_px.mean()), "median_relative_error": median_rel,
        "head_rotation_deg": np.round(fit.head_rotation_deg(), 3).tolist(),
        "seconds": {"detect": round(t_detect - t0, 3), "fit": round(t_fit - t_detect, 3), "total": round(seconds, 3)},
        "tracking_fps": clip.num_frames / max(seconds, 1e-9),
    }
    write_json_atomic(out / FILES["report"], report)
    sink.log(f"tracked {clip.num_frames} frames in {seconds:.1f} s ({report['tracking_fps']:.1f} fps); "
             f"mean landmark error {report['mean_error_px']:.2f} px", stage=STAGE)
    return {"animation": FILES["animation"], "report": FILES["report"], "contact_sheet": FILES["sheet"]}


def main(argv: list[str] | None = None) -> int:
    from ..failures import classify, job_log_dir

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:  # the clip is checked before anything is created: a bad input leaves no folder behind
        open_clip(args.video, fps=args.folder_fps, start=args.start, end=args.end)
        check_output_folder(out, OURS)
        out.mkdir(parents=True, exist_ok=True)
        lock = JobLock(out).acquire()
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - nothing was written: stdout only
        EventSink(None, stream=sys.stdout).error(classify(e), stage=STAGE)
        return EXIT_ERROR
    sink = EventSink(out / "events.jsonl")
    try:
        cancel_file = out / "cancel"
        if cancel_file.is_file() or cancel_file.is_symlink():
            remove_inside(cancel_file, out)  # a new run clears an old cancel request
        remove_partials(out)
        cancel = CancelToken(cancel_file)
        cancel.install_signal_handlers()
        sink.stage(STAGE, "start")
        outputs = track_video(args, out, sink, cancel)
        sink.stage(STAGE, "end")
        sink.done(outputs)
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported as an event, in the file too
        err = classify(e, log_dir=job_log_dir(out))
        sink.error(err, stage=STAGE)
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR
    finally:
        lock.release()
