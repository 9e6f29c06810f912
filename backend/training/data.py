"""The MMVDM training data: items of V views × F frames + a reference image, sampled as in paper S2.2.

The on-disk layout and its validation are in :mod:`backend.training.layout`, frame reading/writing in
:mod:`backend.training.frames`; their public names are re-exported here.

Sampling (paper S2.2)
=====================
:meth:`TrainingDataset.sample` draws, for a curriculum resolution V × F × D, a sequence among those
with V_max ≥ V, F_max ≥ the frame span and at least one (view, frame) slot outside the V × F targets
(for the reference image), uniformly; F consecutive frames (every ``frame_stride``-th) from a random
start; V distinct random views (random order; mode 2 uses the first half as clean references). The
reference image: a random view facing the head (angle between the head's forward axis and the
direction to the camera ≤ ``max_reference_angle`` at that frame, or the sequence's ``reference_views``),
then a random frame outside the sampled frames; if the window covers every frame (e.g. a multi-view
image set, F_max = 1), a facing view outside the sampled views; failing both, the non-target slot whose
view faces the head best. Every frame of every view is cropped around the projected head as in S2.1: a
square box 25 % larger than the head's tight projected box, its centre and size smoothed over time with
the inference crop's Gaussian (:func:`~backend.conditioning.crop.face_crop_boxes`, sigma
``CROP_SMOOTHING_FRAMES`` video frames), resized to D × D; each frame gets the crop camera (intrinsics) that
follows from its box (``TrainingItem.frame_cameras``), so a moving head stays centred and the same size.
``per_frame_crops=False`` keeps one box per view over the window (a constant camera, like the ring cameras
at inference; the experiment's evaluation items use it). The reference image is cropped the same way from
its own frame, with an out-crop mask for padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..cameras import Camera
from ..conditioning.crop import CROP_SCALE, CROP_SMOOTHING_FRAMES, crop_camera, crop_image, face_crop_boxes, head_boxes
from ..errors import MVP4DError
from ..flame import Flame, FlameParams, load_flame
from .frames import read_frames, write_dataset_json, write_sequence
from .layout import (
    FORMAT,
    FORMAT_VERSION,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DatasetError,
    Problem,
    SequenceInfo,
    dataset_meta,
    flame_source,
    frame_name,
    read_sequence,
    sequence_names,
    validate_dataset,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "Problem", "DatasetError", "SequenceInfo",
    "TrainingItem", "TrainingDataset", "MultiDataset", "validate_dataset", "read_sequence", "read_frames", "frame_name",
    "write_dataset_json", "write_sequence", "facing_angles", "MAX_REFERENCE_ANGLE",
]

#: default largest angle (degrees) between the head's forward axis and the direction to a reference camera
MAX_REFERENCE_ANGLE = 60.0


# ---------------------------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingItem:
    """One training example: V views × F frames cropped to D × D, and a reference image."""

    sequence: str
    views: list[str]
    frames: list[int]
    images: np.ndarray  # (V, F, D, D, 3) uint8 on white
    cameras: list[Camera]  # V crop cameras (D × D) of the first frame
    params: FlameParams  # F frames
    reference_image: np.ndarray  # (D, D, 3) uint8
    reference_camera: Camera
    reference_params: FlameParams  # 1 frame
    reference_outcrop: np.ndarray  # (D, D) float32, 1 = photo, 0 = padding
    reference_view: str
    reference_frame: int
    dataset: str = ""
    frame_cameras: list[list[Camera]] | None = None  # V × F per-frame crop cameras; None: ``cameras`` throughout

    def view_cameras(self, view: int) -> list[Camera]:
        """The crop camera of each frame of view ``view`` (index into ``views``)."""
        if self.frame_cameras is None:
            return [self.cameras[view]] * self.num_frames
        return list(self.frame_cameras[view])

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _slice_params(p: FlameParams, idx: Sequence[int]) -> FlameParams:
    i = torch.as_tensor(list(idx), dtype=torch.long)
    return FlameParams(shape=p.shape.clone(), **{k: getattr(p, k)[i].clone() for k in
                                                 ("expr", "global_rot", "neck_pose", "jaw_pose", "eye_pose", "transl")})


def facing_angles(info: SequenceInfo) -> np.ndarray:
    """(V, F) degrees between the head's forward axis (+z rotated by ``global_rot``) and the direction
    from the head (``transl``) to each camera, per frame."""
    from ..flame.lbs import axis_angle_to_matrix

    with torch.no_grad():
        R = axis_angle_to_matrix(info.params.global_rot.double()).numpy()  # (F, 3, 3)
    fwd = R[:, :, 2]  # R @ e_z
    head = info.params.transl.double().numpy()  # (F, 3)
    centers = np.stack([c.center for c in info.cameras])  # (V, 3)
    d = centers[:, None, :] - head[None]  # (V, F, 3)
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    cos = np.clip((d * fwd[None]).sum(-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


class TrainingDataset:
    """A validated training dataset folder (see the module docstring) and its item sampler.

    Args:
        root: the dataset folder (``dataset.json``).
        level: validation when opening: "structure" (default) or "full" (every image / video).
        max_reference_angle: degrees; views facing the head at most this much qualify as reference.
        weight: relative sampling weight of this dataset inside a :class:`MultiDataset`.
    """

    def __init__(self, root: str | Path, *, level: str = "structure",
                 max_reference_angle: float = MAX_REFERENCE_ANGLE, weight: float = 1.0, flame: Flame | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(str(self.root), [Problem("(dataset)", str(self.root), "folder does not exist")])
        meta, probs = dataset_meta(self.root)
        if probs:
            raise DatasetError(str(self.root), probs)
        self.flame_source = flame_source(self.root, meta)
        if flame is None:
            try:
                flame = Flame(load_flame(self.flame_source))
            except MVP4DError as exc:
                raise DatasetError(str(self.root), [Problem("(dataset)", "dataset.json: flame_model", exc.message)]) from exc
        self.flame = flame
        names = sequence_names(self.root, meta, probs)
        seqs = [read_sequence(self.root / n, flame.model, level=level, problems=probs, dataset=self.root.name)
                for n in names]
        if not names and not probs:
            probs.append(Problem("(dataset)", "dataset.json: sequences", "the dataset has no sequences"))
        if probs:
            raise DatasetError(str(self.root), probs)
        self.sequences: list[SequenceInfo] = [s for s in seqs if s is not None]
        self.max_reference_angle = float(max_reference_angle)
        self.weight = float(weight)
        self._facing: dict[int, np.ndarray] = {}
        self._head_mask = np.asarray(flame.model.head_mask(), dtype=bool)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getstate__(self):  # picklable for DataLoader workers (the Flame module pickles fine)
        return self.__dict__.copy()

    # -- queries -----------------------------------------------------------------------------------
    def eligible(self, views: int, frames: int, stride: int = 1) -> list[int]:
        return [i for i, s in enumerate(self.sequences) if s.fits(views, frames, stride)]

    def summary(self) -> dict[str, Any]:
        from collections import Counter

        return {"root": str(self.root), "sequences": len(self.sequences),
                "modalities": dict(Counter(s.modality for s in self.sequences)),
                "max_views": max(s.num_views for s in self.sequences),
                "max_frames": max(s.num_frames for s in self.sequences),
                "identities": len({s.identity or s.name for s in self.sequences})}

    def facing(self, index: int) -> np.ndarray:
        if index not in self._facing:
            self._facing[index] = facing_angles(self.sequences[index])
        return self._facing[index]

    # -- sampling -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, views: int, frames: int, size: int, *, stride: int = 1) -> TrainingItem:
        """A random item at resolution ``views`` × ``frames`` × ``size`` (see the module docstring)."""
        eligible = self.eligible(views, frames, stride)
        if not eligible:
            raise self.no_fit_error(views, frames, stride)
        index = eligible[int(rng.integers(len(eligible)))]
        return self.sample_from(index, rng, views, frames, size, stride=stride)

    def no_fit_error(self, views: int, frames: int, stride: int = 1) -> DatasetError:
        s = self.summary()
        return DatasetError(str(self.root), [Problem("(dataset)", f"resolution {views}x{frames}",
                            f"no sequence has ≥ {views} views and ≥ {(frames - 1) * stride + 1} frames with a "
                            f"reference slot to spare (largest: {s['max_views']} views, {s['max_frames']} frames)")],
                            "Add sequences with enough views/frames or remove that resolution from the curriculum.")

    def sample_from(self, index: int, rng: np.random.Generator, views: int, frames: int, size: int, *,
                    stride: int = 1) -> TrainingItem:
        info = self.sequences[index]
        if not info.fits(views, frames, stride):
            raise self.no_fit_error(views, frames, stride)
        span = info.span(frames, stride)
        start = int(rng.integers(info.num_frames - span + 1))
        frame_idx = [start + stride * k for k in range(frames)]
        view_idx = [int(v) for v in rng.permutation(info.num_views)[:views]]
        ref_view, ref_frame = self.choose_reference(index, rng, view_idx, frame_idx)
        return self.load(index, view_idx, frame_idx, ref_view, ref_frame, size)

    def choose_reference(self, index: int, rng: np.random.Generator, view_idx: Sequence[int],
                         frame_idx: Sequence[int]) -> tuple[int, int]:
        """(view, frame) of the reference image (module docstring, "Sampling")."""
        info = self.sequences[index]
        ang = self.facing(index)  # (V, F)
        targets_v, targets_f = set(view_idx), set(frame_idx)
        if info.reference_views:
            allowed = np.zeros(info.num_views, bool)
            allowed[[info.views.index(v) for v in info.reference_views]] = True
            facing = allowed[:, None] & np.ones_like(ang, bool)
        else:
            facing = ang <= self.max_reference_angle
        other_frames = [f for f in range(info.num_frames) if f not in targets_f]
        # 1. a facing view (any), a frame outside the window
        if other_frames:
            cand = [(v, f) for v in range(info.num_views) for f in other_frames if facing[v, f]]
            if cand:
                views = sorted({v for v, _ in cand})
                v = views[int(rng.integers(len(views)))]
                fs = [f for vv, f in cand if vv == v]
                return v, fs[int(rng.integers(len(fs)))]
        # 2. a facing view outside the sampled views, any frame
        cand = [(v, f) for v in range(info.num_views) if v not in targets_v for f in range(info.num_frames)
                if facing[v, f]]
        if cand:
            return cand[int(rng.integers(len(cand)))]
        # 3. the best-facing slot that is not a target
        slots = [(float(ang[v, f]), v, f) for v in range(info.num_views) for f in range(info.num_frames)
                 if not (v in targets_v and f in targets_f)]
        if not slots:  # excluded by fits(); a bug if reached
            raise MVP4DError("INTERNAL", f"{info.name}: no reference slot outside the sampled views and frames")
        _, v, f = min(slots)
        return v, f

    def load(self, index: int, view_idx: Sequence[int], frame_idx: Sequence[int], ref_view: int, ref_frame: int,
             size: int, *, per_frame_crops: bool = True) -> TrainingItem:
        """Read, matte and crop the given views × frames and the reference slot at ``size`` × ``size``
        (per-frame smoothed crops, or one box per view with ``per_frame_crops=False``; module docstring)."""
        info = self.sequences[index]
        params = _slice_params(info.params, frame_idx)
        ref_params = _slice_params(info.params, [ref_frame])
        with torch.no_grad():
            verts = self.flame(_slice_params(info.params, list(frame_idx) + [ref_frame])).vertices.double().numpy()
        if not np.isfinite(verts).all():
            raise DatasetError(info.name, [Problem(info.name, "flame.npz", "parameters give non-finite vertices")])
        head = verts[:, self._head_mask]
        images, cams, frame_cams = [], [], []
        steps = np.diff(np.asarray(frame_idx, dtype=np.float64))
        sigma = CROP_SMOOTHING_FRAMES / (float(np.median(steps)) if len(steps) else 1.0)  # in video frames
        for v in view_idx:
            cam = info.cameras[v]
            if per_frame_crops:
                self._box(info, cam, head[:-1])  # names the sequence if the head is behind the camera
                boxes = face_crop_boxes(cam, head[:-1], scale=CROP_SCALE, sigma_frames=sigma)
            else:
                boxes = np.repeat(self._box(info, cam, head[:-1])[None], len(frame_idx), axis=0)
            frames = read_frames(info, info.views[v], frame_idx)
            crops = [crop_image(fr, box, size)[0] for fr, box in zip(frames, boxes)]
            images.append(np.stack(crops))
            frame_cams.append([crop_camera(cam, box, size) for box in boxes])
            cams.append(frame_cams[-1][0])
        rcam = info.cameras[ref_view]
        rbox = self._box(info, rcam, head[-1:])
        ref_img = read_frames(info, info.views[ref_view], [ref_frame])[0]
        ref_crop, outcrop = crop_image(ref_img, rbox, size)
        return TrainingItem(sequence=info.name, views=[info.views[v] for v in view_idx], frames=list(frame_idx),
                            images=np.stack(images), cameras=cams, params=params, reference_image=ref_crop,
                            reference_camera=crop_camera(rcam, rbox, size), reference_params=ref_params,
                            reference_outcrop=outcrop, reference_view=info.views[ref_view], reference_frame=int(ref_frame),
                            dataset=info.dataset, frame_cameras=frame_cams if per_frame_crops else None)

    @staticmethod
    def _box(info: SequenceInfo, cam: Camera, head: np.ndarray) -> np.ndarray:
        """One square crop box ``[x0, y0, size]`` around the head over all given frames (T, V, 3)."""
        uv, z = cam.project(head.reshape(-1, 3))
        if (z <= 0).any():
            raise DatasetError(info.name, [Problem(info.name, f"cameras.json: {cam.name}",
                                                   "part of the head is behind this camera")])
        return head_boxes(uv[None], None, CROP_SCALE)[0]


class MultiDataset:
    """Several :class:`TrainingDataset` s sampled together (paper: VFHQ + Nersemble + RenderMe-360 +
    Ava-256 in every stage). For a resolution, a dataset is drawn with probability proportional to its
    ``weight`` among the datasets that have an eligible sequence, then a sequence within it uniformly."""

    def __init__(self, datasets: Sequence[TrainingDataset]):
        if not datasets:
            raise MVP4DError("BAD_INPUT", "no training datasets given", "List at least one dataset folder in data.train.")
        self.datasets = list(datasets)

    @property
    def flame(self) -> Flame:
        return self.datasets[0].flame

    def check_resolutions(self, resolutions: Sequence[tuple[int, int]], stride: int = 1) -> None:
        """Raise :class:`DatasetError` naming every (views, frames) no dataset can serve."""
        probs = []
        for v, f in resolutions:
            if not any(d.eligible(v, f, stride) for d in self.datasets):
                probs.extend(self.datasets[0].no_fit_error(v, f, stride).problems)
        if probs:
            raise DatasetError(", ".join(str(d.root) for d in self.datasets), probs,
                               "Add sequences with enough views/frames or remove those resolutions from the curriculum.")

    def sample(self, rng: np.random.Generator, views: int, frames: int, size: int, *, stride: int = 1) -> TrainingItem:
        ok = [d for d in self.datasets if d.eligible(views, frames, stride)]
        if not ok:
            raise self.datasets[0].no_fit_error(views, frames, stride)
        w = np.array([d.weight for d in ok], dtype=np.float64)
        d = ok[int(rng.choice(len(ok), p=w / w.sum()))] if len(ok) > 1 else ok[0]
        return d.sample(rng, views, frames, size, stride=stride)


# ---------------------------------------------------------------------------------------------
# CLI: python -m backend.training.data validate DIR [--full]
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``validate DIR [--full]`` (the word ``validate`` may be left out, e.g. when a CLI router strips it)."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("validate", "-h", "--help"):
        argv = ["validate", *argv]
    p = argparse.ArgumentParser(prog="python -m backend.training.data", description="validate a training dataset")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="list every problem of a dataset folder (exit 1 if any)")
    v.add_argument("root")
    v.add_argument("--full", action="store_true", help="also open every image header and count video frames")
    args = p.parse_args(argv)
    problems = validate_dataset(args.root, level="full" if args.full else "structure")
    for pr in problems:
        print(pr)
    if problems:  # the last line is an error event, like every other command's failure
        from ..errors import bad_input
        from ..events import EventSink

        EventSink(None, stream=sys.stdout).error(bad_input(
            f"the dataset {args.root} has {len(problems)} problem(s), listed above",
            "Fix or remove the items named above and validate again."))
        return 1
    ds = TrainingDataset(args.root)
    print(json.dumps(ds.summary(), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
