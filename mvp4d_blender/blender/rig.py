"""The FLAME rig in Blender: a mesh with expression shape keys, a 5-bone armature and driven correctives.

Layout (Blender +z up; mesh data = FLAME_TO_BLENDER @ FLAME vertices):

* mesh object (the "rig" the user picks): the basis holds the identity (``v_template + shapedirs
  shape``); one shape key per expression component (absolute coordinates = basis + exprdirs_i);
  one shape key per non-zero pose-corrective column, driven by the bones (see below); an Armature
  modifier with one vertex group per joint (``DEF-<joint>``) holding FLAME's LBS weights (linear).
* armature object (parent of the mesh): the animated bones ``root, neck, jaw, eye_left, eye_right``
  at the joint rest positions, pointing along Blender +z with roll 0 - so each bone's local axes
  *are* FLAME's axes and a bone's local rotation is exactly FLAME's axis-angle of that joint (as a
  quaternion). The root bone carries ``global_rot``/``transl``.
* FLAME regresses joints from the *expressed* mesh, so a joint moves by ``delta_j = D_j @ expr``
  (``D_j = J_regressor_j exprdirs``) and rotations pivot there. Each joint therefore has two hidden
  helper bones: ``MCH-<joint>`` (parent of the animated bone, location driven to ``+delta_j``) and
  ``DEF-<joint>`` (its child, location driven to ``-delta_j``, the only deforming bone). With
  ``MCH-<child>`` parented to ``DEF-<parent>`` the chain reproduces FLAME's
  ``W_j (x - J_j - delta_j) + P_j`` exactly (for any expression and pose).
* pose correctives: FLAME adds ``posedirs @ vec(R_j - I)`` for joints 1..J-1; each entry of
  ``R_j - I`` is a polynomial in the bone's local quaternion, written as a simple driver expression
  (no Python driver, so it works with auto-run scripts off).

``tests/blender/test_rig.py`` compares the evaluated rig with the backend's ``Flame`` numerically.
"""

from __future__ import annotations

import json

import bpy
import numpy as np

from ..io.camera_math import FLAME_TO_BLENDER
from ..io.flame import FlameArrays
from .compat import add_driver

FLAME_TO_BLENDER_ROTATION = FLAME_TO_BLENDER[:3, :3]
RIG_PROP = "mvp4d_rig"
BONE_LENGTH = 0.02
EXPR_RANGE = 5.0
# R - I entry (a, b) in terms of the unit quaternion (w, x, y, z)
_R_MINUS_I = {
    (0, 0): "-2*(y*y+z*z)", (0, 1): "2*(x*y-w*z)", (0, 2): "2*(x*z+w*y)",
    (1, 0): "2*(x*y+w*z)", (1, 1): "-2*(x*x+z*z)", (1, 2): "2*(y*z-w*x)",
    (2, 0): "2*(x*z-w*y)", (2, 1): "2*(y*z+w*x)", (2, 2): "-2*(x*x+y*y)",
}


def to_blender(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float64) @ FLAME_TO_BLENDER_ROTATION.T


def to_flame(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float64) @ FLAME_TO_BLENDER_ROTATION


def is_rig(obj) -> bool:
    return obj is not None and obj.type == "MESH" and bool(obj.get(RIG_PROP))


def armature_of(rig):
    arm = rig.parent if rig is not None else None
    return arm if arm is not None and arm.type == "ARMATURE" else None


def expression_names(rig) -> list[str]:
    return json.loads(rig.get("mvp4d_expr_names", "[]"))


def joint_names(rig) -> list[str]:
    return json.loads(rig.get("mvp4d_joint_names", "[]"))


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def _mesh_from_arrays(name: str, verts: np.ndarray, faces: np.ndarray):
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", np.asarray(verts, np.float32).ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", np.asarray(faces, np.int32).ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", (np.arange(len(faces)) * 3).astype(np.int32))
    me.update(calc_edges=True)
    return me


def _link(obj, collection) -> None:
    (collection or bpy.context.scene.collection).objects.link(obj)


def build_rig(model: FlameArrays, *, shape=None, name: str = "FLAME", source: str = "toy", model_npz: str = "",
              collection=None):
    """Create the rig objects; returns the mesh object (its parent is the armature)."""
    created: list = []
    try:
        arm_data = bpy.data.armatures.new(f"{name} Armature")
        created.append(arm_data)
        arm = bpy.data.objects.new(f"{name} Armature", arm_data)
        created.append(arm)
        _link(arm, collection)
        basis_flame = model.shaped(shape)
        me = _mesh_from_arrays(f"{name} Head", to_blender(basis_flame), model.faces)
        created.append(me)
        rig = bpy.data.objects.new(f"{name} Head", me)
        created.append(rig)
        _link(rig, collection)
        rig.parent = arm
        _build_bones(arm, model, basis_flame)
        _build_weights(rig, model)
        names = _build_shape_keys(rig, model, basis_flame)
        correctives = _build_correctives(rig, arm, model, basis_flame)
        _build_joint_drivers(rig, arm, model)
        mod = rig.modifiers.new("FLAME skinning", "ARMATURE")
        mod.object, mod.use_vertex_groups, mod.use_deform_preserve_volume = arm, True, False
        rig[RIG_PROP] = 1
        rig["mvp4d_flame_source"] = source
        rig["mvp4d_model_id"] = model.model_id
        rig["mvp4d_model_npz"] = model_npz
        rig["mvp4d_shape"] = [float(x) for x in (shape if shape is not None else [])] or [0.0]
        rig["mvp4d_expr_names"] = json.dumps(names)
        rig["mvp4d_joint_names"] = json.dumps(model.joint_names())
        rig["mvp4d_joint_parents"] = [int(p) for p in model.parents]
        rig["mvp4d_correctives"] = json.dumps(correctives)
        rig["mvp4d_fitted"] = 0
        return rig
    except Exception:
        for idb in reversed(created):
            _remove_id(idb)
        raise


def _remove_id(idb) -> None:
    try:
        coll = {bpy.types.Object: bpy.data.objects, bpy.types.Mesh: bpy.data.meshes,
                bpy.types.Armature: bpy.data.armatures}.get(type(idb))
        if coll is not None:
            coll.remove(idb)
    except ReferenceError:
        pass


def _joint_bones(name: str) -> tuple[str, str, str]:
    """(offset, animated, deforming) bone names of a joint."""
    return f"MCH-{name}", name, f"DEF-{name}"


def _edit_armature(arm):
    """Context manager entering edit mode on ``arm`` (background-safe) and leaving it afterwards."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        view_layer = bpy.context.view_layer
        prev_active = view_layer.objects.active
        view_layer.objects.active = arm
        with bpy.context.temp_override(active_object=arm, object=arm, selected_objects=[arm]):
            bpy.ops.object.mode_set(mode="EDIT")
            try:
                yield arm.data.edit_bones
            finally:
                bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = prev_active

    return cm()


def _place(eb, head: np.ndarray) -> None:
    eb.head = head
    eb.tail = head + np.array([0.0, 0.0, BONE_LENGTH])
    eb.roll = 0.0


def _build_bones(arm, model: FlameArrays, basis_flame: np.ndarray) -> None:
    joints = to_blender(model.J_regressor.astype(np.float64) @ basis_flame)
    names = model.joint_names()
    with _edit_armature(arm) as ebs:
        for j, nm in enumerate(names):
            mch, ctl, dfm = (ebs.new(b) for b in _joint_bones(nm))
            for eb in (mch, ctl, dfm):
                _place(eb, joints[j])
            ctl.parent, dfm.parent = mch, ctl
            mch.use_deform = ctl.use_deform = False
            p = int(model.parents[j])
            if p >= 0:
                mch.parent = ebs[_joint_bones(names[p])[2]]
    ctrl = arm.data.collections.new("Controls")
    mech = arm.data.collections.new("Mechanism")
    for nm in names:
        mch, ctl, dfm = _joint_bones(nm)
        ctrl.assign(arm.data.bones[ctl])
        mech.assign(arm.data.bones[mch])
        mech.assign(arm.data.bones[dfm])
    mech.is_visible = False
    for pb in arm.pose.bones:
        pb.rotation_mode = "QUATERNION"
    arm.data.display_type = "STICK"
    arm.show_in_front = True


def _build_joint_drivers(rig, arm, model: FlameArrays) -> int:
    """Drive MCH/DEF locations with +-delta_j = +-(J_regressor exprdirs)_j @ expr. Returns the count."""
    D = np.einsum("jv,vck->jck", model.J_regressor.astype(np.float64), model.exprdirs.astype(np.float64))
    key = rig.data.shape_keys
    exprs = model.expr_names()
    count = 0
    for j, nm in enumerate(model.joint_names()):
        mch, _ctl, dfm = _joint_bones(nm)
        for c in range(3):
            coef = D[j, c]
            nz = np.nonzero(np.abs(coef) > 1e-12)[0]
            if not len(nz):
                continue
            for bone, sign in ((mch, 1.0), (dfm, -1.0)):
                drv = add_driver(arm.pose.bones[bone], "location", c).driver
                drv.type = "SCRIPTED"
                terms = []
                for k in nz:
                    var = drv.variables.new()
                    var.name, var.type = f"e{k}", "SINGLE_PROP"
                    var.targets[0].id_type = "KEY"
                    var.targets[0].id = key
                    var.targets[0].data_path = f'key_blocks["{exprs[k]}"].value'
                    terms.append(f"{sign * coef[k]:+.10g}*e{k}")
                drv.expression = "".join(terms).lstrip("+")
                count += 1
    return count


def _build_weights(rig, model: FlameArrays) -> None:
    me = rig.data
    for j, nm in enumerate(model.joint_names()):
        attr = me.attributes.new(_joint_bones(nm)[2], "FLOAT", "POINT")
        attr.data.foreach_set("value", model.lbs_weights[:, j].astype(np.float32))
        me.attributes.active = attr
        with bpy.context.temp_override(object=rig, active_object=rig, selected_objects=[rig]):
            bpy.ops.geometry.attribute_convert(mode="VERTEX_GROUP")
    for nm in model.joint_names():  # a zero-weight joint still needs its group for the modifier
        if _joint_bones(nm)[2] not in rig.vertex_groups:
            rig.vertex_groups.new(name=_joint_bones(nm)[2])


def _add_key(rig, name: str, coords_blender: np.ndarray, lo: float, hi: float):
    kb = rig.shape_key_add(name=name, from_mix=False)
    kb.data.foreach_set("co", np.asarray(coords_blender, np.float32).ravel())
    kb.slider_min, kb.slider_max, kb.value = lo, hi, 0.0
    return kb


def _build_shape_keys(rig, model: FlameArrays, basis_flame: np.ndarray) -> list[str]:
    rig.shape_key_add(name="Basis", from_mix=False)
    names = model.expr_names()
    for i, nm in enumerate(names):
        _add_key(rig, nm, to_blender(basis_flame + model.exprdirs[:, :, i]), -EXPR_RANGE, EXPR_RANGE)
    rig.data.shape_keys.use_relative = True
    return names


def _build_correctives(rig, arm, model: FlameArrays, basis_flame: np.ndarray) -> list[str]:
    """One driven shape key per non-zero posedirs column (a model without correctives gets none)."""
    names = model.joint_names()
    made = []
    nonzero = np.abs(model.posedirs).reshape(-1, model.posedirs.shape[2]).max(axis=0) > 0
    for k in np.nonzero(nonzero)[0]:
        j, a, b = 1 + k // 9, (k % 9) // 3, k % 3
        key_name = f"pose_{names[j]}_{a}{b}"
        kb = _add_key(rig, key_name, to_blender(basis_flame + model.posedirs[:, :, k]), -2.0, 2.0)
        fc = add_driver(kb, "value")
        drv = fc.driver
        drv.type = "SCRIPTED"
        for comp in ("w", "x", "y", "z"):
            var = drv.variables.new()
            var.name, var.type = comp, "TRANSFORMS"
            t = var.targets[0]
            t.id, t.bone_target = arm, names[j]
            t.transform_type, t.rotation_mode, t.transform_space = f"ROT_{comp.upper()}", "QUATERNION", "LOCAL_SPACE"
        drv.expression = _R_MINUS_I[(a, b)]
        made.append(key_name)
    return made


def set_identity(rig, basis_flame: np.ndarray, shape=None, model: FlameArrays | None = None) -> None:
    """Move the identity baked in the basis; every other key keeps its offset from the basis.

    With ``model`` the bones move to the joints regressed from the new basis, as FLAME does."""
    keys = rig.data.shape_keys.key_blocks
    V = len(rig.data.vertices)
    old = np.empty(V * 3, np.float32)
    keys[0].data.foreach_get("co", old)
    new = to_blender(basis_flame).astype(np.float32).ravel()
    buf = np.empty(V * 3, np.float32)
    for kb in keys[1:]:
        kb.data.foreach_get("co", buf)
        kb.data.foreach_set("co", buf - old + new)
    keys[0].data.foreach_set("co", new)
    rig.data.vertices.foreach_set("co", new)
    if shape is not None:
        rig["mvp4d_shape"] = [float(x) for x in shape] or [0.0]
    rig.data.update()
    arm = armature_of(rig)
    if model is not None and arm is not None:
        move_joints(arm, model.J_regressor.astype(np.float64) @ np.asarray(basis_flame, np.float64),
                    model.joint_names())


def move_joints(arm, joints_flame: np.ndarray, names: list[str]) -> None:
    """Put each joint's three bones at new rest positions (FLAME space), keeping length and axes."""
    joints = to_blender(joints_flame)
    with _edit_armature(arm) as ebs:
        for j, nm in enumerate(names):
            for b in _joint_bones(nm):
                if b in ebs:
                    _place(ebs[b], joints[j])


def rest_vertices_flame(rig) -> np.ndarray:
    """The basis (identity, neutral expression, rest pose) in FLAME space, (V, 3)."""
    keys = rig.data.shape_keys.key_blocks
    buf = np.empty(len(rig.data.vertices) * 3, np.float32)
    keys[0].data.foreach_get("co", buf)
    return to_flame(buf.reshape(-1, 3))


def faces_of(mesh) -> np.ndarray:
    """(F, 3) vertex indices of a triangle mesh in polygon order; raises ValueError if not triangles."""
    n = len(mesh.polygons)
    tot = np.empty(n, np.int32)
    mesh.polygons.foreach_get("loop_total", tot)
    if n and (tot != 3).any():
        raise ValueError("the rig mesh has polygons that are not triangles")
    corner = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    start = np.empty(n, np.int32)
    mesh.polygons.foreach_get("loop_start", start)
    return corner[start[:, None] + np.arange(3)[None, :]].astype(np.int64)


def evaluated_vertices_flame(rig, depsgraph) -> np.ndarray:
    """The rig's evaluated (posed) vertices in FLAME space, (V, 3), in the rig object's frame."""
    ev = rig.evaluated_get(depsgraph)
    me = ev.to_mesh()
    try:
        buf = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", buf)
    finally:
        ev.to_mesh_clear()
    return to_flame(buf.reshape(-1, 3))
