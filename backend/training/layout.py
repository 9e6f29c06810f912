"""The MMVDM training data format: the on-disk layout and its validation (paper S2.2's data, our format).

On-disk layout (``FORMAT`` "mvp4d-training", version 1)
=======================================================

A *dataset* is a folder; each *sequence* (one subject, one capture: a monocular video, a multi-view
image set or a multi-view video) is a sub-folder::

    <dataset>/
      dataset.json            {"format": "mvp4d-training", "format_version": 1,
                               "flame_model": "toy" | "<path to a FLAME .pkl/.npz>" (relative to the
                                              dataset folder or absolute; default "toy"),
                               "sequences": ["name", ...]   (optional; default: every sub-folder that
                                                             holds a sequence.json, sorted)}
      <sequence>/
        sequence.json         {"views": ["cam00", ...],       view names = folder / file / camera keys
                               "num_frames": F,               frames per view (F_max); V_max = len(views)
                               "frame_source": "png" | "video" (default "png"),
                               "fps": 25,                      (optional, informative)
                               "identity": "subject-007",      (optional; keep identities apart in splits)
                               "reference_views": ["cam03"]}   (optional; views allowed as reference
                                                                image, default: views facing the head)
        cameras.json          {"cam00": {"width": W, "height": H, "fx": .., "fy": .., "cx": .., "cy": ..,
                                         "world_to_cam": [[4 × 4]]}, ...}
                              OpenCV cameras in the FLAME world of this sequence (backend.cameras
                              conventions: metres, pixel centres at integer coordinates); one per view.
        flame.npz             per-frame FLAME parameters: shape (S,), expr (F, E), global_rot (F, 3),
                              neck_pose (F, 3), jaw_pose (F, 3), eye_pose (F, 6), transl (F, 3)
                              (``protocol.ANIMATION_KEYS`` + ``shape``; missing pose keys are zeros,
                              shorter shape/expr vectors are zero-padded — ``FlameParams.load_npz``).
        images/<view>/NNNN.png    frame_source "png": frame N of the view, 4 digits from 0000, RGB or
                                  RGBA 8-bit (.png or .jpg), W × H of the view's camera
        videos/<view>.<ext>       frame_source "video": one file per view (.mp4 .avi .mkv .mov .webm)
                                  with exactly F frames, W × H
        mattes/<view>/NNNN.png    optional foreground mattes (8-bit, 255 = subject), or
        mattes/<view>.<ext>       one matte video per view; when present every view and frame needs one

Images are composited on white with the matte (paper S2.2 removes backgrounds with RobustVideoMatting
before training; an RGBA image's alpha counts as its matte). Cameras are constant over a sequence's
frames (calibrated rigs; a monocular video has one camera and the head moves through ``global_rot`` /
``transl``). Converters from other layouts (VFHQ, Nersemble, RenderMe-360, Ava-256 with their FLAME
tracking) are out of scope; this is what they target.

Validation
==========
:func:`validate_dataset` (and :class:`TrainingDataset` when opened) checks every sequence's structure:
JSON files and keys, cameras (one per view, finite numbers, valid matrices), the FLAME file (keys,
shapes, finite values, F frames), one image folder or video per view (and no others), every frame
0 … F − 1 present (and no extra), mattes complete when present; ``level="full"`` also opens every image
header (size) and counts every video's frames. All problems are collected and raised together as one
:class:`DatasetError` (``BAD_INPUT``) whose message names the sequence and the field of each
(``seq012: images/cam03: frames 0007, 0008 missing``). Frames are also checked when read (size,
decodability). Nothing is ever skipped silently: a bad sequence stops training with that message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..cameras import Camera
from ..errors import MVP4DError
from ..flame import FlameParams, load_flame
from .layout_files import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, DatasetError, Problem, _finite_number, _frame_folders,
                           _image_size, _parse_camera, _read_json, _video_frame_count, frame_name)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "Problem", "DatasetError", "SequenceInfo",
    "validate_dataset", "read_sequence", "frame_name", "dataset_meta", "flame_source", "sequence_names",
]

FORMAT = "mvp4d-training"
FORMAT_VERSION = 1


@dataclass
class SequenceInfo:
    """A validated sequence (structure only; frames are read on demand)."""

    name: str
    path: Path
    views: list[str]
    num_frames: int
    cameras: list[Camera]  # one per view, in ``views`` order
    params: FlameParams
    frame_source: str = "png"
    frame_files: dict[str, list[Path]] = field(default_factory=dict)  # png: per view, F paths
    video_files: dict[str, Path] = field(default_factory=dict)  # video: per view
    matte_files: dict[str, list[Path] | Path] = field(default_factory=dict)  # optional
    fps: float | None = None
    identity: str | None = None
    reference_views: list[str] | None = None
    dataset: str = ""

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def modality(self) -> str:
        if self.num_views == 1:
            return "monocular-video" if self.num_frames > 1 else "single-image"
        return "multiview-video" if self.num_frames > 1 else "multiview-images"

    def span(self, frames: int, stride: int = 1) -> int:
        return (int(frames) - 1) * int(stride) + 1

    def fits(self, views: int, frames: int, stride: int = 1) -> bool:
        """V_max ≥ V, F_max ≥ span and a reference slot outside the targets exists."""
        span = self.span(frames, stride)
        if self.num_views < views or self.num_frames < span:
            return False
        return self.num_views > views or self.num_frames > frames


def read_sequence(path: str | Path, flame_model=None, *, level: str = "structure",
                  problems: list[Problem] | None = None, dataset: str = "") -> SequenceInfo | None:
    """Validate and describe one sequence folder. With ``problems`` given, problems are appended there
    and None is returned for a bad sequence; otherwise a :class:`DatasetError` is raised."""
    path = Path(path)
    seq = path.name
    own = problems is None
    probs: list[Problem] = [] if own else problems
    n_before = len(probs)
    info = _read_sequence(path, seq, flame_model, level, probs, dataset)
    if len(probs) > n_before:
        if own:
            raise DatasetError(str(path), probs)
        return None
    return info


def _read_sequence(path: Path, seq: str, flame_model, level: str, probs: list[Problem], dataset: str):
    if not path.is_dir():
        probs.append(Problem(seq, "", f"sequence folder {path} does not exist"))
        return None
    meta = _read_json(path / "sequence.json", seq, probs)
    cams_json = _read_json(path / "cameras.json", seq, probs)
    if not isinstance(meta, dict):
        if meta is not None:
            probs.append(Problem(seq, "sequence.json", "must be a JSON object"))
        return None
    views = meta.get("views")
    if not (isinstance(views, list) and views and all(isinstance(v, str) and v and "/" not in v for v in views)):
        probs.append(Problem(seq, "sequence.json: views", f"must be a non-empty list of view names, got {views!r}"))
        return None
    if len(set(views)) != len(views):
        probs.append(Problem(seq, "sequence.json: views", "view names must be unique"))
        return None
    F = meta.get("num_frames")
    if isinstance(F, bool) or not isinstance(F, int) or F < 1:
        probs.append(Problem(seq, "sequence.json: num_frames", f"must be a positive integer, got {F!r}"))
        return None
    source = meta.get("frame_source", "png")
    if source not in ("png", "video"):
        probs.append(Problem(seq, "sequence.json: frame_source", f"must be 'png' or 'video', got {source!r}"))
        return None
    ref_views = meta.get("reference_views")
    if ref_views is not None and (not isinstance(ref_views, list) or any(v not in views for v in ref_views)
                                  or not ref_views):
        probs.append(Problem(seq, "sequence.json: reference_views", f"must list some of the views, got {ref_views!r}"))
        ref_views = None

    # cameras: one per view, finite
    cameras: list[Camera] = []
    if isinstance(cams_json, dict):
        missing = [v for v in views if v not in cams_json]
        extra = sorted(set(cams_json) - set(views))
        if missing:
            probs.append(Problem(seq, "cameras.json", f"no camera for view(s) {', '.join(missing[:8])}: inconsistent "
                                 f"view count ({len(views)} views listed, {len(cams_json)} cameras)"))
        if extra:
            probs.append(Problem(seq, "cameras.json", f"cameras for view(s) not in sequence.json: {', '.join(extra[:8])}"
                                 f" (inconsistent view count: {len(views)} views listed, {len(cams_json)} cameras)"))
        for v in views:
            if v in cams_json:
                cam = _parse_camera(seq, v, cams_json[v], probs)
                if cam is not None:
                    cameras.append(cam)
    elif cams_json is not None:
        probs.append(Problem(seq, "cameras.json", "must be an object mapping view name → camera"))

    # FLAME parameters
    params = None
    fpath = path / "flame.npz"
    if not fpath.is_file():
        probs.append(Problem(seq, "flame.npz", "file is missing"))
    elif flame_model is not None:
        try:
            params = FlameParams.load_npz(fpath, flame_model.num_shape, flame_model.num_expr)
        except MVP4DError as exc:
            probs.append(Problem(seq, "flame.npz", exc.message.removeprefix("flame.npz: ")))
        else:
            if params.num_frames != F:
                probs.append(Problem(seq, "flame.npz: expr", f"has {params.num_frames} frames, sequence.json num_frames "
                                     f"is {F}: inconsistent frame count"))
                params = None

    # frames, videos, mattes
    frames, videos = {}, {}
    img_root = path / ("images" if source == "png" else "videos")
    if not img_root.is_dir():
        probs.append(Problem(seq, f"{img_root.name}/", "folder is missing"))
    elif source == "png":
        frames, _ = _frame_folders(seq, img_root, "images", views, F, probs, allow_videos=False)
    else:
        _, videos = _frame_folders(seq, img_root, "videos", views, F, probs, allow_videos=True)
    mattes: dict[str, Any] = {}
    if (path / "mattes").is_dir():
        m_frames, m_videos = _frame_folders(seq, path / "mattes", "mattes", views, F, probs, allow_videos=True)
        mattes = {**m_frames, **m_videos}

    cam_by_view = {c.name: c for c in cameras}
    if level == "full":
        for v in views:
            cam = cam_by_view.get(v)
            want = None if cam is None else (cam.width, cam.height)
            for kind, files in (("images", frames.get(v)), ("mattes", mattes.get(v) if isinstance(mattes.get(v), list) else None)):
                for i, f in enumerate(files or []):
                    size = _image_size(f)
                    if size is None:
                        probs.append(Problem(seq, f"{kind}/{v}/{f.name}", "unreadable image"))
                    elif want is not None and size != want:
                        probs.append(Problem(seq, f"{kind}/{v}/{f.name}", f"is {size[0]}×{size[1]}, camera {v} is "
                                             f"{want[0]}×{want[1]}"))
            for kind, vid in (("videos", videos.get(v)), ("mattes", mattes.get(v) if isinstance(mattes.get(v), Path) else None)):
                if vid is not None:
                    n = _video_frame_count(vid)
                    if n != F:
                        probs.append(Problem(seq, f"{kind}/{vid.name}", f"has {n} readable frames, num_frames is {F}"))
    elif level == "structure":
        for v in views:  # the first frame's size per view (one header read)
            cam = cam_by_view.get(v)
            if cam is not None and frames.get(v):
                size = _image_size(frames[v][0])
                if size is None:
                    probs.append(Problem(seq, f"images/{v}/{frames[v][0].name}", "unreadable image"))
                elif size != (cam.width, cam.height):
                    probs.append(Problem(seq, f"images/{v}/{frames[v][0].name}", f"is {size[0]}×{size[1]}, camera "
                                         f"{v} is {cam.width}×{cam.height}"))
    if len(cameras) != len(views) or params is None:
        return None
    fps = meta.get("fps")
    return SequenceInfo(name=seq, path=path, views=list(views), num_frames=F, cameras=cameras, params=params,
                        frame_source=source, frame_files=frames, video_files=videos, matte_files=mattes,
                        fps=float(fps) if _finite_number(fps) else None, identity=meta.get("identity"),
                        reference_views=ref_views, dataset=dataset)


def dataset_meta(root: Path) -> tuple[dict[str, Any], list[Problem]]:
    probs: list[Problem] = []
    meta = _read_json(root / "dataset.json", "(dataset)", probs)
    if meta is None:
        return {}, probs
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        probs.append(Problem("(dataset)", "dataset.json: format", f"must be {FORMAT!r}, got "
                             f"{meta.get('format') if isinstance(meta, dict) else meta!r}"))
        return {}, probs
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        probs.append(Problem("(dataset)", "dataset.json: format_version", f"{meta.get('format_version')} is newer than "
                             f"this reader ({FORMAT_VERSION})"))
    return meta, probs


def flame_source(root: Path, meta: dict[str, Any]) -> str:
    src = meta.get("flame_model", "toy")
    if src == "toy":
        return src
    p = Path(src).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def sequence_names(root: Path, meta: dict[str, Any], probs: list[Problem]) -> list[str]:
    names = meta.get("sequences")
    if names is None:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "sequence.json").is_file())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        probs.append(Problem("(dataset)", "dataset.json: sequences", "must be a list of folder names"))
        return []
    return list(names)


def validate_dataset(root: str | Path, *, level: str = "structure", flame_model=None) -> list[Problem]:
    """Every problem of the dataset at ``root`` (empty list = valid). ``level``: "structure" (files,
    JSON, cameras, FLAME, frame lists, first-frame sizes) or "full" (every image header, every video)."""
    root = Path(root)
    if not root.is_dir():
        return [Problem("(dataset)", str(root), "folder does not exist")]
    meta, probs = dataset_meta(root)
    if probs:
        return probs
    if flame_model is None:
        try:
            flame_model = load_flame(flame_source(root, meta))
        except MVP4DError as exc:
            return [Problem("(dataset)", "dataset.json: flame_model", exc.message)]
    names = sequence_names(root, meta, probs)
    if not names and not probs:
        probs.append(Problem("(dataset)", "dataset.json: sequences", "the dataset has no sequences"))
    for n in names:
        read_sequence(root / n, flame_model, level=level, problems=probs, dataset=root.name)
    return probs

