"""Import an avatar bundle as a point mesh bound to the rig, and read the bound splats back.

The importer checks everything first (bundle keys and shapes, rig present, rig topology equal to the
bundle's ``mesh.faces``), then creates the mesh, its attributes and the two Geometry Nodes modifiers,
and only then touches the rig (identity from the bundle, the sequence's keyframes). Any failure
removes what was created and restores the rig, so a failed import leaves the scene as it was.
"""

from __future__ import annotations

import json

import bpy
import numpy as np

from ..io.binding import local_to_world, matrix_to_quat, quat_multiply, quat_normalize, smallest_axis_last
from ..io.bundle import animation, read_bundle
from ..io.camera_math import FLAME_TO_BLENDER
from .compat import set_modifier_input
from . import models, nodes, render, rig as rigmod, rig_params
from .splat_mesh import _read, sh_dc_colour, srgb_to_linear
from .splat_mesh import display_modifier, set_display  # noqa: F401 - the avatar's display, as panels and tools call it

AVATAR_PROP = "mvp4d_avatar"
Q_B2F = matrix_to_quat(FLAME_TO_BLENDER[:3, :3].T)


class AvatarImportError(ValueError):
    """A user-facing import failure; nothing was created."""


def is_avatar(obj) -> bool:
    return obj is not None and obj.type == "MESH" and bool(obj.get(AVATAR_PROP))


def check_topology(rig, bundle) -> None:
    if not rigmod.is_rig(rig):
        raise AvatarImportError("no FLAME rig: pick the rig the avatar should follow (Add FLAME rig creates one)")
    try:
        faces = rigmod.faces_of(rig.data)
    except ValueError as e:
        raise AvatarImportError(f"the rig '{rig.name}' cannot drive this avatar: {e}") from e
    nv = len(rig.data.vertices)
    if faces.shape != bundle.faces.shape or nv != bundle.rest_vertices.shape[0] or not np.array_equal(
            faces, bundle.faces.astype(np.int64)):
        raise AvatarImportError(
            f"the rig '{rig.name}' ({nv} vertices, {len(faces)} faces) does not have the avatar's topology "
            f"({bundle.rest_vertices.shape[0]} vertices, {len(bundle.faces)} faces); "
            "build the rig from the same FLAME model the avatar was generated with")


def _set_attr(mesh, name: str, dtype: str, values: np.ndarray) -> None:
    a = mesh.attributes.new(name, dtype, "POINT")
    kind = {"INT": np.int32}.get(dtype, np.float32)
    key = "color" if dtype == "FLOAT_COLOR" else ("vector" if dtype == "FLOAT_VECTOR" else "value")
    a.data.foreach_set(key, np.ascontiguousarray(values, dtype=kind).ravel())


def build_avatar_mesh(name: str, bundle, rest_blender: np.ndarray):
    """The point mesh with every attribute the binding, display and exporters read."""
    n = bundle.num_gaussians
    pos, _, _ = local_to_world(rest_blender, bundle.faces, bundle.parent_face, bundle.local_position)
    bundle_faces = bundle.faces.astype(np.int64)
    me = bpy.data.meshes.new(name)
    me.vertices.add(n)
    me.vertices.foreach_set("co", pos.astype(np.float32).ravel())
    tri = bundle_faces[bundle.parent_face.astype(np.int64)]
    for k in range(3):
        _set_attr(me, f"bind_v{k}", "INT", tri[:, k])
    _set_attr(me, "parent_face", "INT", bundle.parent_face.astype(np.int64))
    _set_attr(me, "local_position", "FLOAT_VECTOR", bundle.local_position)
    q = quat_normalize(bundle.local_rotation)
    _set_attr(me, "local_rotation", "QUATERNION", q)
    _set_attr(me, "log_scale", "FLOAT_VECTOR", bundle.log_scale)
    dq, ds = smallest_axis_last(q, bundle.log_scale)
    _set_attr(me, "display_local_rotation", "QUATERNION", dq)
    _set_attr(me, "display_log_scale", "FLOAT_VECTOR", ds)
    # exp() once here, not on every frame: the binding only multiplies these by the triangle's scale
    _set_attr(me, "rest_scale", "FLOAT_VECTOR", np.exp(bundle.log_scale.astype(np.float64)))
    _set_attr(me, "display_rest_scale", "FLOAT_VECTOR", np.exp(ds.astype(np.float64)))
    _set_attr(me, "opacity_logit", "FLOAT", bundle.opacity_logit)
    _set_attr(me, "splat_opacity", "FLOAT", 1.0 / (1.0 + np.exp(-bundle.opacity_logit.astype(np.float64))))
    for k in range(bundle.sh.shape[1]):
        _set_attr(me, f"sh_{k}", "FLOAT_VECTOR", bundle.sh[:, k, :])
    rgb = srgb_to_linear(sh_dc_colour(bundle.sh))
    _set_attr(me, "splat_color", "FLOAT_COLOR", np.concatenate([rgb, np.ones((n, 1))], axis=1))
    _set_attr(me, "splat_color_srgb", "FLOAT_COLOR", np.concatenate([sh_dc_colour(bundle.sh), np.ones((n, 1))], axis=1))
    me.update()
    return me


def build_details_object(name: str, bundle, collection, created: list):
    """A hidden helper mesh of ``T x N`` points holding ``animation.detail_offsets`` (None without them).

    The binding group samples point ``t * N + i`` at bundle frame ``t`` (``nodes._detail_offset``);
    float32 in the mesh (the bundle stores float16), about 12 bytes per splat and frame."""
    offsets = bundle.detail_offsets
    if offsets is None or not np.any(offsets):
        return None
    T, N, _ = offsets.shape
    me = bpy.data.meshes.new(name)
    created.append(me)
    me.vertices.add(T * N)
    me.vertices.foreach_set("co", np.ascontiguousarray(offsets, dtype=np.float32).ravel())
    me.update()
    obj = bpy.data.objects.new(name, me)
    created.append(obj)
    collection.objects.link(obj)
    obj.hide_select = True  # points only: nothing to render
    if obj.name in context_view_layer_objects():
        obj.hide_set(True)  # hidden but evaluated: the binding reads it (hide_viewport would drop it)
    return obj


def context_view_layer_objects():
    return bpy.context.view_layer.objects


def artist_keyframes(rig) -> bool:
    """True when the rig carries keyframes that no avatar import made (an artist's animation)."""
    if rig.get("mvp4d_keyed_by_import"):
        return False
    owners = [rig.data.shape_keys, rigmod.armature_of(rig)]
    return any(o is not None and o.animation_data is not None and o.animation_data.action is not None for o in owners)


def import_avatar(context, filepath: str, rig, *, animate: bool = True, name: str = "MVP4D Avatar",
                  with_cameras: bool = False, replace_keyframes: bool = False):
    """Import ``filepath`` bound to ``rig``; returns (object, messages). Raises AvatarImportError/BundleError.

    Also sets the scene up to render like the backend (:func:`render.setup_render`) and, with
    ``with_cameras``, adds the bundle's corpus cameras named after their views."""
    bundle = read_bundle(filepath)
    check_topology(rig, bundle)
    messages = []
    if bundle.metadata.get("flame_model_id") not in (None, rig.get("mvp4d_model_id")):
        messages.append(f"the avatar was made with head model {bundle.metadata.get('flame_model_id')}, "
                        f"the rig is {rig.get('mvp4d_model_id')}")
    old_basis = rigmod.rest_vertices_flame(rig)
    created = []
    changed_identity = False
    try:
        if np.abs(old_basis - bundle.rest_vertices.astype(np.float64)).max() > 1e-5:
            rigmod.set_identity(rig, bundle.rest_vertices, model=models.model_of_rig(rig))
            changed_identity = True
            messages.append("the rig's identity was set to the avatar's")
        rest_blender = rigmod.to_blender(bundle.rest_vertices.astype(np.float64))
        me = build_avatar_mesh(name, bundle, rest_blender)
        created.append(me)
        obj = bpy.data.objects.new(name, me)
        created.append(obj)
        coll = rig.users_collection[0] if rig.users_collection else context.scene.collection
        coll.objects.link(obj)
        obj.matrix_world = rig.matrix_world.copy()
        binding, display, mat = nodes.ensure_groups()
        me.materials.append(mat)
        m1 = obj.modifiers.new("MVP4D Binding", "NODES")
        m1.node_group = binding
        set_modifier_input(m1, "Rig", rig)
        details = build_details_object(f"{name} details", bundle, coll, created)
        if details is not None:
            set_modifier_input(m1, "Details", details)
            obj["mvp4d_details"] = details
        set_modifier_input(m1, "First Frame", int(context.scene.frame_start))
        obj["mvp4d_first_frame"] = int(context.scene.frame_start)
        m2 = obj.modifiers.new("MVP4D Display", "NODES")
        m2.node_group = display
        set_modifier_input(m2, "Material", mat)
        obj[AVATAR_PROP] = 1
        obj["mvp4d_bundle"] = str(filepath)
        obj["mvp4d_rig"] = rig
        obj["mvp4d_metadata"] = json.dumps(bundle.metadata, default=str)[:60000]
        obj["mvp4d_sh_degree"] = bundle.sh_degree
        if animate and bundle.num_frames and artist_keyframes(rig) and not replace_keyframes:
            messages.append("kept the rig's own keyframes (import with replace_keyframes=True for the avatar's)")
        elif animate and bundle.num_frames:
            start = context.scene.frame_start
            rig_params.keyframe_sequence(rig, animation(bundle), start)
            rig["mvp4d_keyed_by_import"] = True
            context.scene.frame_end = start + bundle.num_frames - 1
            messages.append(f"the rig was keyed with the avatar's {bundle.num_frames} frames")
        if with_cameras:
            coll = render.add_corpus_cameras(context, rig, bundle.metadata.get("camera_ring"))
            messages.append(f"added {len(coll.objects)} corpus cameras" if coll else "the bundle has no cameras")
        render.setup_render(context.scene, rig, avatar=obj)
        return obj, messages
    except Exception:
        for idb in reversed(created):
            try:
                (bpy.data.objects if isinstance(idb, bpy.types.Object) else bpy.data.meshes).remove(idb)
            except ReferenceError:
                pass
        if changed_identity:
            rigmod.set_identity(rig, old_basis, model=models.model_of_rig(rig))
        raise


def evaluated_splats(obj, depsgraph, space: str = "WORLD") -> dict[str, np.ndarray]:
    """The bound splats as Geometry Nodes evaluated them: positions, rotations (wxyz), linear scales.

    ``space``: "LOCAL" (the avatar object's frame, Blender axes), "WORLD" (Blender world) or
    "FLAME" (Blender world converted to FLAME/glTF axes, +y up).
    """
    ev = obj.evaluated_get(depsgraph)
    me = ev.data
    n = len(me.vertices)
    pos = np.empty(n * 3, np.float32)
    me.vertices.foreach_get("co", pos)
    out = {"position": pos.reshape(-1, 3).astype(np.float64), "rotation": _read(me, "rotation", 4).astype(np.float64),
           "scale": _read(me, "scale", 3).astype(np.float64), "opacity_logit": _read(me, "opacity_logit", 1),
           "parent_face": _read(me, "parent_face", 1, np.int32), "local_position": _read(me, "local_position", 3),
           "local_rotation": _read(me, "local_rotation", 4), "log_scale": _read(me, "log_scale", 3)}
    K = int(obj.get("mvp4d_sh_degree", 0) + 1) ** 2
    out["sh"] = np.stack([_read(me, f"sh_{k}", 3) for k in range(K)], axis=1)
    if space in ("WORLD", "FLAME"):
        M = np.array(obj.matrix_world, dtype=np.float64)
        lin = M[:3, :3]
        sc = np.cbrt(abs(np.linalg.det(lin)))
        out["position"] = out["position"] @ lin.T + M[:3, 3]
        out["rotation"] = quat_multiply(matrix_to_quat(lin / sc), out["rotation"])
        out["scale"] = out["scale"] * sc
    if space == "FLAME":
        out["position"] = out["position"] @ FLAME_TO_BLENDER[:3, :3]
        out["rotation"] = quat_multiply(np.broadcast_to(Q_B2F, out["rotation"].shape), out["rotation"])
    return out

