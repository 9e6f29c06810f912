"""What the fit reads and how it starts: the corpus, visible triangles, initial colours.

:func:`load_corpus` reads ``stages/corpus/`` (layout in :mod:`backend.job_stages`) and checks it
(``BAD_INPUT`` naming the view and frame of a missing image, a wrong image size, a camera that sees
nothing of the head). :func:`facing_faces` is the paper's back-face culling at initialisation
(triangles that never face any ring camera in any frame get no Gaussian). :func:`face_colors` gives
every triangle the mean corpus colour of the pixels it covers (mesh rasterized from the ring), which
makes the first render close to the target — CPU fits have few iterations to spare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import Camera, stack_K, stack_world_to_cam
from ..errors import MVP4DError, bad_input
from ..flame.lbs import Flame, FlameParams
from ..jobpaths import confine
from ..protocol import CameraSpec
from ..render.raster import project_points, rasterize

PRELOAD_BYTES = 1 << 30  # corpora below this are decoded once and kept in memory


@dataclass
class Corpus:
    """The multi-view videos and what they were rendered from."""

    root: Path
    cameras: list[Camera]
    names: list[str]
    key_indices: list[int]
    num_frames: int
    fps: float
    params: FlameParams
    manifest: dict
    resolution: int | None = None  # images are resized to this on load (None: as stored)
    _cache: dict = field(default_factory=dict)

    def path(self, view: int, frame: int) -> Path:
        """A frame's file, confined to the corpus folder (``corpus.json`` is data, not trusted code)."""
        pattern = self.manifest.get("frame_pattern", "{frame:04d}.png")
        try:
            name = str(pattern).format(frame=frame)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise bad_input(f"corpus.json: frame_pattern {pattern!r} is not a frame-number pattern ({e})",
                            "Delete stages/corpus and run the corpus stage again.") from e
        return confine(self.root, self.manifest["views"][view]["dir"], name, where=f"corpus.json: views[{view}]")

    def image(self, view: int, frame: int) -> torch.Tensor:
        """uint8 (H, W, 3) of a view's frame (cached when the corpus is small)."""
        key = (view, frame)
        if key in self._cache:
            return self._cache[key]
        img = Image.open(self.path(view, frame)).convert("RGB")
        if self.resolution is not None and img.size != (self.resolution, self.resolution):
            img = img.resize((self.resolution, self.resolution), Image.Resampling.BOX)
        t = torch.from_numpy(np.asarray(img).copy())
        c = self.cameras[view]
        size_bytes = len(self.cameras) * self.num_frames * c.width * c.height * 3
        if size_bytes <= PRELOAD_BYTES:
            self._cache[key] = t
        return t


def load_corpus(corpus_dir: str | Path, flame: Flame, shape: torch.Tensor | None = None,
                resolution: int | None = None) -> Corpus:
    root = Path(corpus_dir)
    for name in ("corpus.json", "cameras.json", "animation.npz"):
        if not (root / name).is_file():
            raise bad_input(f"the corpus {root} has no {name}", "Run the corpus stage first.")
    manifest = json.loads((root / "corpus.json").read_text(encoding="utf-8"))
    specs = json.loads((root / "cameras.json").read_text(encoding="utf-8"))
    cameras = [Camera.from_spec(CameraSpec.from_json(s, f"cameras.json[{i}]")) for i, s in enumerate(specs)]
    views = manifest.get("views", [])
    if len(views) != len(cameras) or not cameras:
        raise bad_input(f"corpus.json lists {len(views)} views but cameras.json has {len(cameras)} cameras",
                        "Delete stages/corpus and run the corpus stage again.")
    T = int(manifest["num_frames"])
    params = FlameParams.load_npz(root / "animation.npz", flame.num_shape, flame.num_expr)
    if params.num_frames != T:
        raise bad_input(f"animation.npz has {params.num_frames} frames, corpus.json says {T}")
    if shape is not None:
        params.shape = torch.as_tensor(shape, dtype=torch.float32).reshape(-1)
    if resolution is not None:
        cameras = [c.scaled(resolution, resolution) if (c.width, c.height) != (resolution, resolution) else c
                   for c in cameras]
    corpus = Corpus(root, cameras, [v["name"] for v in views], list(manifest.get("key_indices", [])), T,
                    float(manifest.get("fps", 24.0)), params, manifest, resolution)
    for v, view in enumerate(views):
        folder = confine(root, view.get("dir"), where=f"corpus.json: views[{v}].dir")
        if not folder.is_dir():
            raise bad_input(f"the corpus is missing view {view['name']!r} (no folder {view['dir']})",
                            "Run the job again: the corpus stage regenerates missing views.")
        for t in range(T):
            p = corpus.path(v, t)
            if not p.is_file():
                raise bad_input(f"the corpus view {view['name']!r} is missing frame {t} ({p.name})",
                                f"Regenerate that view: delete {view['dir']} and stages/corpus/done.json, then run again.")
        with Image.open(corpus.path(v, 0)) as im:
            w, h = im.size
        spec = specs[v]
        if (w, h) != (spec["width"], spec["height"]):
            raise bad_input(f"the corpus view {view['name']!r} has {w}x{h} images but its camera is "
                            f"{spec['width']}x{spec['height']}")
    return corpus


def check_cameras_see_head(cameras: list[Camera], names: list[str], vertices: torch.Tensor) -> None:
    """``BAD_INPUT`` naming the first camera that sees no vertex of the head in any frame."""
    for cam, name in zip(cameras, names):
        w2c, K = stack_world_to_cam([cam]), stack_K([cam])
        seen = False
        for s in range(0, len(vertices), 16):
            uvz = project_points(vertices[s:s + 16], w2c.expand(len(vertices[s:s + 16]), 4, 4),
                                 K.expand(len(vertices[s:s + 16]), 3, 3))
            u, v, z = uvz.unbind(-1)
            inside = (z > 1e-3) & (u >= -0.5) & (u <= cam.width - 0.5) & (v >= -0.5) & (v <= cam.height - 0.5)
            if inside.any():
                seen = True
                break
        if not seen:
            raise MVP4DError("BAD_INPUT", f"camera {name!r} of the ring sees nothing of the head",
                             "Point every ring camera at the head (or remove it from the ring) and run again.")


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit outward normals and centroids (..., F, 3) (faces counter-clockwise seen from outside)."""
    v0, v1, v2 = (vertices[..., faces[:, i], :] for i in range(3))
    n = torch.nn.functional.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)
    return n, (v0 + v1 + v2) / 3.0


def facing_faces(vertices: torch.Tensor, faces: torch.Tensor, cameras: list[Camera]) -> torch.Tensor:
    """(F,) bool: the triangle faces at least one camera in at least one frame (paper S2.4)."""
    keep = torch.zeros(faces.shape[0], dtype=torch.bool)
    centers = torch.as_tensor(np.stack([c.center for c in cameras]), dtype=vertices.dtype)  # (C, 3)
    for s in range(0, len(vertices), 8):
        n, c = face_normals(vertices[s:s + 8], faces)  # (t, F, 3)
        to_cam = centers[:, None, None, :] - c[None]  # (C, t, F, 3)
        keep |= ((to_cam * n[None]).sum(-1) > 0).any(0).any(0)
    return keep


def face_colors(corpus: Corpus, vertices: torch.Tensor, faces: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """(F, 3) mean corpus colour in [0, 1] of the pixels each triangle covers in ``frames``.

    Triangles covering no pixel centre take the colour under their projected centroid in the views
    where they are the visible surface; the rest take the mean colour of all covered triangles.
    """
    F_ = faces.shape[0]
    total = torch.zeros(F_, 3, dtype=torch.float64)
    count = torch.zeros(F_, dtype=torch.float64)
    for t in frames:
        _, cen = face_normals(vertices[t], faces)
        for v, cam in enumerate(corpus.cameras):
            frag = rasterize(vertices[t][None], faces, stack_world_to_cam([cam]), stack_K([cam]), cam.height, cam.width)
            fid = frag.face_id[0].reshape(-1)
            img = corpus.image(v, t).reshape(-1, 3).double() / 255.0
            m = fid >= 0
            total.index_add_(0, fid[m], img[m])
            count.index_add_(0, fid[m], torch.ones(int(m.sum()), dtype=torch.float64))
            # sub-pixel triangles: sample under the centroid if that triangle's depth matches the z-buffer
            uvz = project_points(cen[None], stack_world_to_cam([cam]), stack_K([cam]))[0]
            ui, vi = uvz[:, 0].round().long(), uvz[:, 1].round().long()
            ok = (count == 0) & (ui >= 0) & (ui < cam.width) & (vi >= 0) & (vi < cam.height) & (uvz[:, 2] > 0)
            if ok.any():
                idx = torch.nonzero(ok).ravel()
                zb = frag.depth[0][vi[idx], ui[idx]]
                hit = (zb > 0) & ((uvz[idx, 2] - zb).abs() < 2e-3)
                idx = idx[hit]
                total.index_add_(0, idx, 0.5 * img.reshape(cam.height, cam.width, 3)[vi[idx], ui[idx]])
                count.index_add_(0, idx, torch.full((len(idx),), 0.5, dtype=torch.float64))
    seen = count > 0
    out = torch.empty(F_, 3, dtype=torch.float64)
    out[seen] = total[seen] / count[seen, None]
    out[~seen] = out[seen].mean(0) if seen.any() else 0.5
    return out.float()


def train_frame_list(num_frames: int, mode: str) -> list[int]:
    if mode == "even":
        return list(range(0, num_frames, 2))
    if mode == "first":
        return [0]
    return list(range(num_frames))


__all__ = ["Corpus", "load_corpus", "check_cameras_see_head", "facing_faces", "face_colors", "face_normals",
           "train_frame_list"]
