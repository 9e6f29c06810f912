"""A tiny independent glTF evaluator for the tests: node TRS at a keyframe, skins and morph targets (numpy)."""

from __future__ import annotations

import numpy as np

from backend.engines.gltf_builder import read_accessor


def _quat_matrix(xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(xyzw, np.float64) / np.linalg.norm(xyzw)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def animated_state(doc: dict, blob: bytes, key: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """World matrices of every node and morph weights per node at keyframe ``key`` of animation 0."""
    nodes = doc["nodes"]
    trs = [{"t": np.array(n.get("translation", [0, 0, 0]), float), "r": np.array(n.get("rotation", [0, 0, 0, 1]),
            float), "s": np.array(n.get("scale", [1, 1, 1]), float)} for n in nodes]
    weights: dict[int, np.ndarray] = {}
    for anim in doc.get("animations", []):
        for ch in anim["channels"]:
            smp = anim["samplers"][ch["sampler"]]
            times = read_accessor(doc, blob, smp["input"])[:, 0]
            out = read_accessor(doc, blob, smp["output"])
            node, path = ch["target"]["node"], ch["target"]["path"]
            if path == "weights":
                weights[node] = out.reshape(len(times), -1)[key]
            else:
                trs[node][{"translation": "t", "rotation": "r", "scale": "s"}[path]] = out[key]
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
    world: list[np.ndarray | None] = [None] * len(nodes)

    def get(i: int) -> np.ndarray:
        if world[i] is None:
            m = np.eye(4)
            m[:3, :3] = _quat_matrix(trs[i]["r"]) * trs[i]["s"]
            m[:3, 3] = trs[i]["t"]
            world[i] = (get(parent[i]) @ m) if i in parent else m
        return world[i]

    return [get(i) for i in range(len(nodes))], weights


def posed_positions(doc: dict, blob: bytes, node: int, key: int) -> np.ndarray:
    """Positions of ``node``'s first primitive at keyframe ``key``: morph targets, then skin or node transform."""
    world, weights = animated_state(doc, blob, key)
    prim = doc["meshes"][doc["nodes"][node]["mesh"]]["primitives"][0]
    pos = read_accessor(doc, blob, prim["attributes"]["POSITION"])
    w = weights.get(node, np.asarray(doc["meshes"][doc["nodes"][node]["mesh"]].get("weights", [])))
    for k, target in enumerate(prim.get("targets", [])):
        pos = pos + w[k] * read_accessor(doc, blob, target["POSITION"])
    ph = np.concatenate([pos, np.ones((len(pos), 1))], axis=1)
    if "skin" not in doc["nodes"][node]:
        return (ph @ world[node].T)[:, :3]
    skin = doc["skins"][doc["nodes"][node]["skin"]]
    ibm = read_accessor(doc, blob, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    mats = np.stack([world[j] @ ibm[i] for i, j in enumerate(skin["joints"])])
    ji = read_accessor(doc, blob, prim["attributes"]["JOINTS_0"]).astype(int)
    jw = read_accessor(doc, blob, prim["attributes"]["WEIGHTS_0"])
    blend = np.einsum("nk,nkij->nij", jw, mats[ji])
    return np.einsum("nij,nj->ni", blend, ph)[:, :3]
