"""Extra Gaussians from keypoints triangulated across the first frame of every view (paper §4).

The paper detects DISK keypoints and matches them with LightGlue between each key view and the other
views, triangulates keypoints matched in more than three views and binds a Gaussian to each point's
nearest triangle. Offline and weights-free, this module does the same with OpenCV: SIFT (ORB when SIFT
is unavailable) with Lowe's ratio test, then a geometric check against the *known* cameras (distance
to the epipolar line), tracks joined across pairs (union-find; a track holding two different keypoints
of one view is dropped), linear triangulation (DLT, in normalised camera coordinates) of tracks seen in
at least ``min_views`` views, and filtering by cheirality and reprojection error. (DISK+LightGlue
would need network weights this offline build never downloads; SIFT on the 2x-upsampled first frames
is what runs.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..cameras import Camera

@dataclass
class SfmResult:
    points: np.ndarray  # (P, 3) world positions
    colors: np.ndarray  # (P, 3) mean RGB in [0, 1] over the observations
    num_views: np.ndarray  # (P,) views each point was matched in
    reproj_error: np.ndarray  # (P,) largest reprojection error, pixels
    method: str = "sift"

    def __len__(self) -> int:
        return len(self.points)


def _detector(method: str):
    if method == "sift" and hasattr(cv2, "SIFT_create"):
        return cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.01, edgeThreshold=20), cv2.NORM_L2, "sift"
    return cv2.ORB_create(nfeatures=4000, fastThreshold=5, edgeThreshold=8, patchSize=15), cv2.NORM_HAMMING, "orb"


def detect(images: Sequence[np.ndarray], method: str = "sift", upsample: int = 1):
    """Keypoints (K, 2) in original pixel coordinates (pixel centres at integers) and descriptors."""
    det, norm, name = _detector(method)
    out = []
    for img in images:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        if upsample > 1:
            gray = cv2.resize(gray, None, fx=upsample, fy=upsample, interpolation=cv2.INTER_CUBIC)
        kps, desc = det.detectAndCompute(gray, None)
        # OpenCV keypoints also put pixel centres at integer coordinates
        uv = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        uv = (uv + 0.5) / upsample - 0.5
        out.append((uv, desc))
    return out, norm, name


def fundamental(cam_a: Camera, cam_b: Camera) -> np.ndarray:
    """F with x_b^T F x_a = 0 for pixels of the same world point (known cameras)."""
    R = cam_b.R @ cam_a.R.T
    t = cam_b.t - R @ cam_a.t
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cam_b.K).T @ tx @ R @ np.linalg.inv(cam_a.K)


def _epipolar_distance(F_: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ha = np.c_[a, np.ones(len(a))]
    hb = np.c_[b, np.ones(len(b))]
    la = ha @ F_.T  # lines in b
    lb = hb @ F_  # lines in a
    da = np.abs((hb * la).sum(1)) / np.maximum(np.hypot(la[:, 0], la[:, 1]), 1e-12)
    db = np.abs((ha * lb).sum(1)) / np.maximum(np.hypot(lb[:, 0], lb[:, 1]), 1e-12)
    return np.maximum(da, db)


def match_pair(desc_a, desc_b, norm: int, ratio: float = 0.8) -> np.ndarray:
    """(M, 2) index pairs passing Lowe's ratio test (and mutual-best)."""
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    bf = cv2.BFMatcher(norm)
    knn = bf.knnMatch(desc_a, desc_b, k=2)
    good = {m.queryIdx: m.trainIdx for m, *rest in (p for p in knn if len(p) == 2)
            if not rest or m.distance < ratio * rest[0].distance}
    back = {m.queryIdx: m.trainIdx for m in bf.match(desc_b, desc_a)}  # b -> a if good else {}
    pairs = [(q, t) for q, t in good.items() if back.get(t, -1) == q] if back else []
    return np.array(pairs, np.int64).reshape(-1, 2)


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def triangulate_dlt(cameras: Sequence[Camera], uv: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of one point from pixels ``uv (M, 2)`` in ``cameras`` (M of them)."""
    rows = []
    for cam, (u, v) in zip(cameras, uv):
        xn = np.linalg.solve(cam.K, np.array([u, v, 1.0]))
        P = cam.world_to_cam[:3]
        rows.append(xn[0] * P[2] - P[0])
        rows.append(xn[1] * P[2] - P[1])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    X = vt[-1]
    return X[:3] / X[3] if abs(X[3]) > 1e-15 else np.full(3, np.nan)


def reprojection_errors(cameras: Sequence[Camera], uv: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-observation pixel error and camera depth of world point ``X``."""
    err, depth = [], []
    for cam, obs in zip(cameras, uv):
        p, z = cam.project(X[None])
        err.append(float(np.linalg.norm(p[0] - obs)))
        depth.append(float(z[0]))
    return np.array(err), np.array(depth)


def sfm_points(
    images: Sequence[np.ndarray], cameras: Sequence[Camera], key_indices: Sequence[int] | None = None, *,
    min_views: int = 4, max_reproj_px: float | None = None, max_epipolar_px: float | None = None,
    ratio: float = 0.8, method: str = "sift", log: Callable[[str], None] | None = None,
) -> SfmResult:
    """Keypoints matched between each key view and every other view, triangulated (module docstring).

    ``images``: the first frame of each view, uint8 (H, W, 3). Thresholds default to 1.5 px at 128 px
    (scaled with the image size, at least 1 px).
    """
    n = len(images)
    res = max(images[0].shape[:2]) if n else 128
    max_reproj_px = max_reproj_px or max(1.0, 1.5 * res / 128)
    max_epipolar_px = max_epipolar_px or max(1.0, 1.5 * res / 128)
    keys = [k for k in (key_indices or [0]) if 0 <= k < n] or [0]
    upsample = 2 if res <= 128 else 1
    feats, norm, method = detect(images, method, upsample)
    uf = _UnionFind()
    for a in keys:
        for b in range(n):
            if b == a or (b in keys and b < a):
                continue
            m = match_pair(feats[a][1], feats[b][1], norm, ratio)
            if len(m) == 0:
                continue
            d = _epipolar_distance(fundamental(cameras[a], cameras[b]), feats[a][0][m[:, 0]], feats[b][0][m[:, 1]])
            for i, j in m[d <= max_epipolar_px]:
                uf.union((a, int(i)), (b, int(j)))
    tracks: dict = {}
    for node in list(uf.parent):
        tracks.setdefault(uf.find(node), []).append(node)
    pts, cols, nv, errs = [], [], [], []
    for nodes in tracks.values():
        views = [v for v, _ in nodes]
        if len(set(views)) != len(views) or len(views) < min_views:
            continue  # conflicting (two keypoints of one view) or seen too rarely
        cams = [cameras[v] for v in views]
        uv = np.array([feats[v][0][i] for v, i in nodes])
        X = triangulate_dlt(cams, uv)
        if not np.all(np.isfinite(X)):
            continue
        e, z = reprojection_errors(cams, uv, X)
        if (z <= 0).any() or e.max() > max_reproj_px:
            continue
        c = [images[v][int(round(min(max(q[1], 0), images[v].shape[0] - 1))),
                       int(round(min(max(q[0], 0), images[v].shape[1] - 1)))] for v, q in zip(views, uv)]
        pts.append(X)
        cols.append(np.mean(c, 0) / 255.0)
        nv.append(len(views))
        errs.append(e.max())
    if log is not None:
        log(f"sfm ({method}): {sum(len(f[0]) for f in feats)} keypoints in {n} views, {len(tracks)} tracks, "
            f"{len(pts)} triangulated in >= {min_views} views")
    return SfmResult(
        points=np.array(pts, np.float64).reshape(-1, 3), colors=np.array(cols, np.float64).reshape(-1, 3),
        num_views=np.array(nv, np.int64), reproj_error=np.array(errs, np.float64), method=method,
    )


__all__ = ["SfmResult", "sfm_points", "triangulate_dlt", "reprojection_errors", "fundamental", "match_pair",
           "detect"]
