"""The procedural toy head (backend.flame.toy): layout, determinism, orientation, rig and landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from backend.flame import Flame, FlameParams, build_toy_head
from backend.flame import toy, toy_mesh
from backend.flame.model import NUM_MEDIAPIPE_LANDMARKS

REQUIRED_EXPRESSIONS = ("jaw_open", "smile", "blink_left", "blink_right", "brow_raise")


@pytest.fixture(scope="module")
def head():
    return build_toy_head()


@pytest.fixture(scope="module")
def flame(head):
    return Flame(head)


def lm_index(head, mp_id: int) -> int:
    return int(np.flatnonzero(head.landmark_ids == mp_id)[0])


def landmarks(flame, **expr) -> np.ndarray:
    p = FlameParams.zeros(flame, 1)
    for k, v in expr.items():
        p.expr[0, flame.model.expression_names.index(k)] = v
    return flame(p).landmarks[0].numpy()


def test_validates_with_components_and_names(head) -> None:
    head.validate()
    assert 3000 <= head.num_vertices <= 5500 and head.num_joints == 5
    assert head.num_shape >= 10 and head.num_expr >= 10
    assert set(REQUIRED_EXPRESSIONS) <= set(head.expression_names)
    assert len(head.shape_names) == head.num_shape and head.model_id == "toy:v1"
    assert np.array_equal(head.parents, [-1, 0, 1, 1, 1])
    assert head.posedirs.shape == (head.num_vertices, 3, 36)


def test_deterministic_and_copies(head) -> None:
    fresh = toy._build.__wrapped__()  # a second build from scratch (no cache)
    assert np.array_equal(toy_mesh._grid.__wrapped__()[2], toy_mesh._grid()[2])
    for k in ("v_template", "faces", "shapedirs", "exprdirs", "J_regressor", "lbs_weights", "landmark_faces", "landmark_bary"):
        assert np.array_equal(getattr(fresh, k), getattr(head, k)), k
    mine = build_toy_head()
    mine.v_template[:] = 0.0  # callers get their own copy
    assert np.abs(build_toy_head().v_template).max() > 0.05


def test_closed_and_oriented_outwards(head) -> None:
    V, F = head.v_template.astype(np.float64), head.faces
    edges = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    keys = edges[:, 0] * len(V) + edges[:, 1]
    assert len(np.unique(keys)) == len(keys), "a directed edge is used twice (inconsistent winding)"
    twins = edges[:, 1] * len(V) + edges[:, 0]
    assert np.isin(twins, keys).all(), "the surface has holes"
    tri = V[F]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert 3.5e-3 < volume < 7e-3  # m^3; an adult head and neck is roughly 4-5 litres
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centroid = tri.mean(1)
    part = toy_mesh.topology().part[F].max(1)
    skin = part == 0
    out = np.einsum("ij,ij->i", n, centroid - toy_mesh.RAY_ORIGIN * toy.CM)
    assert (out[skin] > 0).mean() > 0.99
    for side, p in (("left", 3), ("right", 4)):
        ball = part == p
        assert (np.einsum("ij,ij->i", n[ball], centroid[ball] - toy.eye_centre(side)) > 0).all()


def test_proportions(head, flame) -> None:
    V = head.v_template
    cranium = V[(V[:, 1] > 0.03) & (V[:, 1] < 0.06)]
    assert 0.14 < np.ptp(cranium[:, 0]) < 0.16  # head width
    lm = landmarks(flame)
    chin = lm[lm_index(head, 152)]
    assert 0.21 < V[:, 1].max() - chin[1] < 0.25  # chin to crown
    assert np.argmax(lm[:, 2]) in (lm_index(head, 1), lm_index(head, 4))  # the nose points along +z
    mid = 0.5 * (V[head.head_vertex_mask].max(0) + V[head.head_vertex_mask].min(0))
    assert np.abs(mid).max() < 0.03  # centred near the origin
    assert not head.head_vertex_mask[V[:, 1] < -0.15].any() and head.head_vertex_mask[V[:, 1] > -0.10].all()


def test_mirror_symmetric(head) -> None:
    V = head.v_template
    d, _ = cKDTree(V).query(V * [-1, 1, 1])
    assert d.max() < 1e-6


def test_joints_and_weights(head) -> None:
    J = head.joints()
    assert np.allclose(J[3], toy.eye_centre("left"), atol=1e-6) and np.allclose(J[4], toy.eye_centre("right"), atol=1e-6)
    assert J[3, 0] > 0 > J[4, 0]  # joint 3 is the subject's left eye (+x)
    assert abs(J[2, 0]) < 1e-6 and -0.03 < J[2, 1] < 0.0 and J[2, 2] < 0.03  # jaw hinge behind the mouth
    W = head.lbs_weights
    topo = toy_mesh.topology()
    assert np.all(W[topo.eyeballs[0], 3] == 1) and np.all(W[topo.eyeballs[1], 4] == 1)
    m = topo.mouth_slit
    assert np.all(W[m.lower, 2] == 1) and np.all(W[m.upper, 2] == 0)
    assert np.all(W[head.v_template[:, 1] < -0.17, 0] > 0.99)  # neck bottom follows the root
    skin = topo.part == 0
    assert np.all(W[skin & (head.v_template[:, 1] > 0.02), 1] > 0.99)  # upper head follows the neck joint


def test_landmark_table(head) -> None:
    ids = head.landmark_ids
    assert len(ids) >= 40 and len(np.unique(ids)) == len(ids)
    assert ids.min() >= 0 and ids.max() < NUM_MEDIAPIPE_LANDMARKS
    assert [m for m, _, _ in toy.LANDMARKS] == list(ids)
    assert np.allclose(head.landmark_bary.sum(1), 1) and (head.landmark_bary >= 0).all()


def test_landmarks_lie_on_the_surface(head, flame) -> None:
    lm = landmarks(flame)
    tri = head.v_template[head.faces[head.landmark_faces]]
    assert np.allclose(np.einsum("lk,lkc->lc", head.landmark_bary, tri), lm, atol=1e-7)
    # on the outside: the face under each frontal landmark faces the viewer (+z)
    front = np.array([spec[0] == "front" for _, _, spec in toy.LANDMARKS])
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (n[front, 2] > 0).all()


def test_landmarks_sit_where_named(head, flame) -> None:
    lm = landmarks(flame)
    P = {m: lm[lm_index(head, m)] for m in head.landmark_ids}
    for m in (263, 362, 386, 374, 473, 300, 334, 291, 425, 454):
        assert P[m][0] > 0.005, m  # subject's left is +x
    for m in (33, 133, 159, 145, 468, 70, 105, 61, 205, 234):
        assert P[m][0] < -0.005, m
    assert abs(P[33][0]) > abs(P[133][0]) and abs(P[263][0]) > abs(P[362][0])  # outer corners lateral
    assert P[159][1] > P[145][1] + 0.005 and P[386][1] > P[374][1] + 0.005  # open eyes
    assert P[105][1] > P[159][1] > P[1][1] > P[0][1] > P[17][1] > P[152][1]
    assert P[10][1] == max(p[1] for p in P.values()) and P[152][1] == min(p[1] for p in P.values())
    assert np.linalg.norm(P[13] - P[14]) < 1e-6  # closed mouth at rest
    assert abs(P[468][0] - toy.eye_centre("right")[0]) < 1e-6 and P[468][2] > toy.eye_centre("right")[2] + 0.01


def test_blink_left_closes_only_the_left_eye(head, flame) -> None:
    rest, shut = landmarks(flame), landmarks(flame, blink_left=1.0)
    up, low = lm_index(head, 386), lm_index(head, 374)
    assert rest[up, 1] - rest[low, 1] > 0.006
    assert np.linalg.norm(shut[up] - shut[low]) < 1e-4 and shut[up, 1] < rest[up, 1] - 0.005
    assert np.allclose(shut[lm_index(head, 159)], rest[lm_index(head, 159)])  # right eye still open
    slit = toy_mesh.topology().eye_slits[0]
    p = FlameParams.zeros(flame, 1)
    p.expr[0, head.expression_names.index("blink_left")] = 1.0
    v = flame(p).vertices[0].numpy()
    assert np.abs(v[slit.upper] - v[slit.lower]).max() < 1e-4  # the whole lid closes
    half = landmarks(flame, blink_right=0.5)
    r_up, r_low = lm_index(head, 159), lm_index(head, 145)
    assert 0.3 < (half[r_up, 1] - half[r_low, 1]) / (rest[r_up, 1] - rest[r_low, 1]) < 0.7


def test_expressions_are_local_and_visible(head) -> None:
    for k, name in enumerate(head.expression_names):
        d = np.linalg.norm(head.exprdirs[:, :, k], axis=1)
        assert 0.002 < d.max() < (0.04 if name == "jaw_open" else 0.025), name
        assert not d[toy_mesh.topology().part >= 3].any(), name  # eyeballs move only by eye pose
    jaw = head.exprdirs[:, :, head.expression_names.index("jaw_open")]
    assert jaw[toy_mesh.topology().mouth_slit.lower, 1].max() < -0.003


def test_jaw_open_opens_the_mouth(head, flame) -> None:
    lm = landmarks(flame, jaw_open=1.0)
    assert lm[lm_index(head, 13), 1] - lm[lm_index(head, 14), 1] > 0.01


@pytest.mark.parametrize("sign", [-3.0, 3.0])
def test_shape_extremes_stay_plausible(head, flame, sign: float) -> None:
    F = head.faces
    V0 = head.v_template.astype(np.float64)
    n0 = np.cross(V0[F[:, 1]] - V0[F[:, 0]], V0[F[:, 2]] - V0[F[:, 0]])
    for k, name in enumerate(head.shape_names):
        s = torch.zeros(head.num_shape)
        s[k] = sign
        V = flame.neutral_vertices(s).numpy().astype(np.float64)
        assert 0.002 < np.abs(V - V0).max() < 0.03, name
        n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
        assert (np.einsum("ij,ij->i", n, n0) > 0).mean() > 0.995, name  # no folded skin
        assert 0.13 < np.ptp(V[(V[:, 1] > 0.03) & (V[:, 1] < 0.06), 0]) < 0.17, name
