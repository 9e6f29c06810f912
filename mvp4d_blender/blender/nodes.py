"""Geometry Nodes and the splat material, built from Python (reviewable source, no appended .blend).

* ``MVP4D Splat Binding`` (group): reads the evaluated rig mesh (Object Info, relative), computes the
  frame of each *triangle* once per frame (on the rig's faces, about 10k, not per splat) exactly like
  ``io/binding.py``::

      a0 = normalize(v1 - v0); a1 = normalize(a0 x (v2 - v0)); a2 = -normalize(a1 x a0)
      s = (|v1 - v0| + |a2 . (v2 - v0)|) / 2; c = (v0 + v1 + v2) / 3; q = rotation with columns a0, a1, a2

  then each splat samples its ``parent_face``'s (q, s, c): position = s q(x_l) + c (x_l =
  local_position + this frame's detail offset), rotation = q (x) q_local, scale = rest_scale s
  (``rest_scale`` = exp(log_scale), computed at import), stored as ``rotation``/``scale`` (and the same
  for the display axes) on the points.
* ``MVP4D Splat Display`` (group): one quad per splat spanning +-3 sigma of its two largest axes,
  oriented and scaled from the stored attributes, with the splat material; the bound points are kept
  in the output so exporters and tests read them from the evaluated mesh.
* ``MVP4D Splat`` (material): emission of the splat colour, alpha = opacity * exp(-r^2 / 2) in units
  of sigma, mixed with transparency (EEVEE dithered, Cycles transparent bounces).
"""

from __future__ import annotations

import bpy

from .compat import set_surface_render_method, set_wildcard_pattern, use_material_nodes

BINDING_GROUP = "MVP4D Splat Binding"
DISPLAY_GROUP = "MVP4D Splat Display"
MATERIAL = "MVP4D Splat"
SIGMA_EXTENT = 3.0  # the quad spans +-3 sigma
#: per-face attributes the binding stores on the evaluated rig geometry (its own copy, not the rig)
FACE_ROT, FACE_SCALE, FACE_CENTRE = "mvp4d_face_rotation", "mvp4d_face_scale", "mvp4d_face_centre"


class _G:
    """Tiny helper to add nodes and links to a node tree."""

    def __init__(self, tree):
        self.tree, self.x = tree, 0

    def node(self, idname: str, **props):
        n = self.tree.nodes.new(idname)
        for k, v in props.items():
            setattr(n, k, v)
        n.location = (self.x, 0)
        self.x += 40
        return n

    def link(self, out, inp):
        self.tree.links.new(out, inp)

    def vmath(self, op: str, a, b=None, scale=None):
        n = self.node("ShaderNodeVectorMath", operation=op)
        self.link(a, n.inputs[0])
        if b is not None:
            self.link(b, n.inputs[1])
        if scale is not None:
            if isinstance(scale, (int, float)):
                n.inputs[3].default_value = scale
            else:
                self.link(scale, n.inputs[3])
        return n.outputs[1] if op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else n.outputs[0]

    def math(self, op: str, a, b=None):
        n = self.node("ShaderNodeMath", operation=op)
        for i, v in enumerate((a, b)):
            if v is None:
                continue
            if isinstance(v, (int, float)):
                n.inputs[i].default_value = v
            else:
                self.link(v, n.inputs[i])
        return n.outputs[0]

    def attr(self, name: str, data_type: str):
        n = self.node("GeometryNodeInputNamedAttribute", data_type=data_type)
        n.inputs["Name"].default_value = name
        return n.outputs["Attribute"]

    def store(self, geo, name: str, data_type: str, value, domain: str = "POINT"):
        n = self.node("GeometryNodeStoreNamedAttribute", data_type=data_type, domain=domain)
        self.link(geo, n.inputs["Geometry"])
        n.inputs["Name"].default_value = name
        self.link(value, n.inputs["Value"])
        return n.outputs["Geometry"]


def _new_group(name: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]):
    old = bpy.data.node_groups.get(name)
    if old is not None:
        bpy.data.node_groups.remove(old)
    ng = bpy.data.node_groups.new(name, "GeometryNodeTree")
    for nm, st in inputs:
        ng.interface.new_socket(nm, in_out="INPUT", socket_type=st)
    for nm, st in outputs:
        ng.interface.new_socket(nm, in_out="OUTPUT", socket_type=st)
    return ng


def _detail_offset(g: _G, gi):
    """This frame's fine-detail offset of each splat (triangle-local units), zero without a details mesh.

    The details mesh holds ``T x N`` points: point ``t * N + i`` is splat ``i``'s offset at bundle frame
    ``t`` (``animation.detail_offsets``). Bundle frame = scene frame - First Frame, clamped to [0, T-1]."""
    info = g.node("GeometryNodeObjectInfo", transform_space="ORIGINAL")
    g.link(gi.outputs["Details"], info.inputs["Object"])
    n_splats = g.node("GeometryNodeAttributeDomainSize", component="MESH")
    g.link(gi.outputs["Geometry"], n_splats.inputs["Geometry"])
    n_total = g.node("GeometryNodeAttributeDomainSize", component="MESH")
    g.link(info.outputs["Geometry"], n_total.inputs["Geometry"])
    frames = g.math("FLOOR", g.math("DIVIDE", n_total.outputs["Point Count"], g.math("MAXIMUM", n_splats.outputs[
        "Point Count"], 1.0)))
    t = g.math("FLOOR", g.math("SUBTRACT", g.node("GeometryNodeInputSceneTime").outputs["Frame"],
                               gi.outputs["First Frame"]))
    t = g.math("MAXIMUM", g.math("MINIMUM", t, g.math("SUBTRACT", frames, 1.0)), 0.0)
    idx = g.math("ADD", g.math("MULTIPLY", t, n_splats.outputs["Point Count"]), g.node("GeometryNodeInputIndex").outputs[0])
    si = g.node("GeometryNodeSampleIndex", data_type="FLOAT_VECTOR", domain="POINT")
    g.link(info.outputs["Geometry"], si.inputs["Geometry"])
    g.link(g.node("GeometryNodeInputPosition").outputs[0], si.inputs["Value"])
    g.link(idx, si.inputs["Index"])
    return si.outputs[0]


def _face_frames(g: _G, rig_geo):
    """The rig geometry with each triangle's frame stored on its faces (``FACE_ROT``/``FACE_SCALE``/``FACE_CENTRE``).

    Computed once per triangle (about 10k for FLAME) instead of once per splat (100k+): the corners are
    read with Corners of Face / Vertex of Corner, which follow the polygon's loop order = the bundle's
    ``mesh.faces`` order (the import checks the topology is equal)."""
    v = []
    for k in range(3):
        corner = g.node("GeometryNodeCornersOfFace")
        corner.inputs["Sort Index"].default_value = k
        vert = g.node("GeometryNodeVertexOfCorner")
        g.link(corner.outputs["Corner Index"], vert.inputs["Corner Index"])
        at = g.node("GeometryNodeFieldAtIndex", domain="POINT", data_type="FLOAT_VECTOR")
        g.link(g.node("GeometryNodeInputPosition").outputs[0], at.inputs["Value"])
        g.link(vert.outputs["Vertex Index"], at.inputs["Index"])
        v.append(at.outputs[0])
    e1 = g.vmath("SUBTRACT", v[1], v[0])
    e2 = g.vmath("SUBTRACT", v[2], v[0])
    a0 = g.vmath("NORMALIZE", e1)
    a1 = g.vmath("NORMALIZE", g.vmath("CROSS_PRODUCT", a0, e2))
    a2 = g.vmath("SCALE", g.vmath("NORMALIZE", g.vmath("CROSS_PRODUCT", a1, a0)), scale=-1.0)
    s = g.math("MULTIPLY", g.math("ADD", g.vmath("LENGTH", e1), g.math("ABSOLUTE", g.vmath("DOT_PRODUCT", a2, e2))),
               0.5)
    c = g.vmath("SCALE", g.vmath("ADD", g.vmath("ADD", v[0], v[1]), v[2]), scale=1.0 / 3.0)
    q_face = g.node("FunctionNodeAxesToRotation", primary_axis="X", secondary_axis="Y")
    g.link(a0, q_face.inputs["Primary Axis"])  # columns a0, a1, a0 x a1 (= a2)
    g.link(a1, q_face.inputs["Secondary Axis"])
    geo = g.store(rig_geo, FACE_ROT, "QUATERNION", q_face.outputs[0], domain="FACE")
    geo = g.store(geo, FACE_SCALE, "FLOAT", s, domain="FACE")
    return g.store(geo, FACE_CENTRE, "FLOAT_VECTOR", c, domain="FACE")


def build_binding_group():
    ng = _new_group(BINDING_GROUP, [("Geometry", "NodeSocketGeometry"), ("Rig", "NodeSocketObject"),
                                    ("Details", "NodeSocketObject"), ("First Frame", "NodeSocketInt")],
                    [("Geometry", "NodeSocketGeometry")])
    g = _G(ng)
    gi, go = g.node("NodeGroupInput"), g.node("NodeGroupOutput")
    info = g.node("GeometryNodeObjectInfo", transform_space="RELATIVE")
    g.link(gi.outputs["Rig"], info.inputs["Object"])
    frames = _face_frames(g, info.outputs["Geometry"])
    face = g.attr("parent_face", "INT")

    def sample(name: str, data_type: str):
        si = g.node("GeometryNodeSampleIndex", data_type=data_type, domain="FACE")
        g.link(frames, si.inputs["Geometry"])
        g.link(g.attr(name, data_type), si.inputs["Value"])
        g.link(face, si.inputs["Index"])
        return si.outputs[0]

    q_face, s, c = sample(FACE_ROT, "QUATERNION"), sample(FACE_SCALE, "FLOAT"), sample(FACE_CENTRE, "FLOAT_VECTOR")
    lp = g.vmath("ADD", g.attr("local_position", "FLOAT_VECTOR"), _detail_offset(g, gi))
    rv = g.node("FunctionNodeRotateVector")
    g.link(lp, rv.inputs["Vector"])
    g.link(q_face, rv.inputs["Rotation"])
    world = g.vmath("ADD", g.vmath("SCALE", rv.outputs[0], scale=s), c)

    def rotated(attr_name: str):
        r = g.node("FunctionNodeRotateRotation", rotation_space="GLOBAL")
        g.link(g.attr(attr_name, "QUATERNION"), r.inputs["Rotation"])
        g.link(q_face, r.inputs["Rotate By"])
        return r.outputs[0]

    geo = gi.outputs["Geometry"]
    geo = g.store(geo, "rotation", "QUATERNION", rotated("local_rotation"))
    geo = g.store(geo, "scale", "FLOAT_VECTOR", g.vmath("SCALE", g.attr("rest_scale", "FLOAT_VECTOR"), scale=s))
    geo = g.store(geo, "display_rotation", "QUATERNION", rotated("display_local_rotation"))
    geo = g.store(geo, "display_scale", "FLOAT_VECTOR",
                  g.vmath("SCALE", g.attr("display_rest_scale", "FLOAT_VECTOR"), scale=s))
    setp = g.node("GeometryNodeSetPosition")
    g.link(geo, setp.inputs["Geometry"])
    g.link(world, setp.inputs["Position"])
    g.link(setp.outputs[0], go.inputs["Geometry"])
    return ng


#: gsplat's screen-space blur added to every projected covariance (``eps2d``, pixels^2)
BLUR_PX2 = 0.3


def _camera_facing(g: _G, gi):
    """Rotation and scale of a camera-facing quad drawing each splat as gsplat does.

    The splat's covariance (axes ``display_rotation`` x ``display_scale``) is projected with the
    perspective Jacobian of the ``Camera`` input (``Focal`` pixels): rows jx = (f/z)(r + (x/z) b) and
    jy = (f/z)(u + (y/z) b) for the camera's right r, up u, back b and the splat at (x, y, -z) in camera
    axes. The rows are turned into the splat's own axes once (R^T jx, R^T jy), so J R S is two
    rotations and two products instead of three rotated, scaled axes and six dot products; gsplat's
    0.3 px^2 blur is added; the 2x2 result's eigenvectors (in the r, u plane) and
    sqrt(eigenvalues) * z / f give the quad's axes and its world-space sigmas at the splat's depth."""
    cam = g.node("GeometryNodeObjectInfo", transform_space="RELATIVE")
    g.link(gi.outputs["Camera"], cam.inputs["Object"])

    def rot(vec, rotation):
        n = g.node("FunctionNodeRotateVector")
        if isinstance(vec, tuple):
            n.inputs["Vector"].default_value = vec
        else:
            g.link(vec, n.inputs["Vector"])
        g.link(rotation, n.inputs["Rotation"])
        return n.outputs[0]

    r, u, b = (rot(v, cam.outputs["Rotation"]) for v in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    d = g.vmath("SUBTRACT", g.node("GeometryNodeInputPosition").outputs[0], cam.outputs["Location"])
    z = g.math("MAXIMUM", g.math("MULTIPLY", g.vmath("DOT_PRODUCT", d, b), -1.0), 1e-6)
    f = gi.outputs["Focal"]
    fz = g.math("DIVIDE", f, z)
    jx = g.vmath("SCALE", g.vmath("ADD", r, g.vmath("SCALE", b, scale=g.math("DIVIDE", g.vmath("DOT_PRODUCT", d, r), z))),
                 scale=fz)
    jy = g.vmath("SCALE", g.vmath("ADD", u, g.vmath("SCALE", b, scale=g.math("DIVIDE", g.vmath("DOT_PRODUCT", d, u), z))),
                 scale=fz)
    inv = g.node("FunctionNodeInvertRotation")
    g.link(g.attr("display_rotation", "QUATERNION"), inv.inputs["Rotation"])
    sc = g.attr("display_scale", "FLOAT_VECTOR")
    p = g.vmath("MULTIPLY", rot(jx, inv.outputs[0]), sc)  # row 1 of J R S
    q = g.vmath("MULTIPLY", rot(jy, inv.outputs[0]), sc)  # row 2
    A = g.math("ADD", g.vmath("DOT_PRODUCT", p, p), BLUR_PX2)
    B = g.vmath("DOT_PRODUCT", p, q)
    C = g.math("ADD", g.vmath("DOT_PRODUCT", q, q), BLUR_PX2)
    mid = g.math("MULTIPLY", g.math("ADD", A, C), 0.5)
    half = g.math("MULTIPLY", g.math("SUBTRACT", A, C), 0.5)
    rad = g.math("SQRT", g.math("ADD", g.math("MULTIPLY", half, half), g.math("MULTIPLY", B, B)))
    l1, l2 = g.math("ADD", mid, rad), g.math("MAXIMUM", g.math("SUBTRACT", mid, rad), 1e-12)
    theta = g.math("MULTIPLY", g.math("ARCTAN2", g.math("MULTIPLY", B, 2.0), g.math("SUBTRACT", A, C)), 0.5)
    c, s_ = g.math("COSINE", theta), g.math("SINE", theta)
    e1 = g.vmath("ADD", g.vmath("SCALE", r, scale=c), g.vmath("SCALE", u, scale=s_))
    e2 = g.vmath("SUBTRACT", g.vmath("SCALE", u, scale=c), g.vmath("SCALE", r, scale=s_))
    atr = g.node("FunctionNodeAxesToRotation", primary_axis="X", secondary_axis="Y")
    g.link(e1, atr.inputs["Primary Axis"])
    g.link(e2, atr.inputs["Secondary Axis"])
    world = g.math("DIVIDE", z, f)
    scale = g.node("ShaderNodeCombineXYZ")
    g.link(g.math("MULTIPLY", g.math("SQRT", l1), world), scale.inputs[0])
    g.link(g.math("MULTIPLY", g.math("SQRT", l2), world), scale.inputs[1])
    scale.inputs[2].default_value = 1e-6
    return atr.outputs[0], scale.outputs[0]


#: point attributes the quads do not need (Instance on Points copies every attribute onto the instances)
_NOT_DRAWN = ("sh_*", "bind_v*", "local_*", "display_l*", "*rest_scale", "log_scale", "opacity_logit",
              "splat_color_srgb", "parent_face", "rotation", "scale")


def _drawn_attributes_only(g: _G, geo):
    """``geo`` without the attributes the quads never read: the instances then carry only position,
    ``display_rotation``/``display_scale`` (read before instancing) and the material's ``splat_color``
    and ``splat_opacity``, instead of copying every SH coefficient onto every instance each frame."""
    for pattern in _NOT_DRAWN:
        n = g.node("GeometryNodeRemoveAttribute")
        if "*" in pattern:
            set_wildcard_pattern(n)
        g.link(geo, n.inputs["Geometry"])
        n.inputs["Name"].default_value = pattern
        geo = n.outputs[0]
    return geo


def _viewport_or_render(g: _G, drawn, bound):
    """Viewport: the drawn splats (quad instances, cheap to evaluate every frame) joined with the bound
    points (exporters and scripts read those from the evaluated mesh). Final render: the quads only,
    realized into one mesh, so Cycles syncs one object instead of one per splat (100k splats: about
    2.5 s of object sync down to 0.6 s). The material reads colour and opacity either way."""
    join = g.node("GeometryNodeJoinGeometry")
    g.link(drawn, join.inputs[0])
    g.link(bound, join.inputs[0])
    realize = g.node("GeometryNodeRealizeInstances")
    g.link(drawn, realize.inputs[0])
    sw = g.node("GeometryNodeSwitch", input_type="GEOMETRY")
    g.link(g.node("GeometryNodeIsViewport").outputs[0], sw.inputs["Switch"])
    g.link(realize.outputs[0], sw.inputs["False"])
    g.link(join.outputs[0], sw.inputs["True"])
    return sw.outputs[0]


def build_display_group():
    ng = _new_group(DISPLAY_GROUP, [("Geometry", "NodeSocketGeometry"), ("Show Splats", "NodeSocketBool"),
                                    ("Splat Size", "NodeSocketFloat"), ("Min Opacity", "NodeSocketFloat"),
                                    ("Point Radius", "NodeSocketFloat"), ("Material", "NodeSocketMaterial"),
                                    ("Camera", "NodeSocketObject"), ("Focal", "NodeSocketFloat")],
                    [("Geometry", "NodeSocketGeometry")])
    items = {i.name: i for i in ng.interface.items_tree if i.item_type == "SOCKET" and i.in_out == "INPUT"}
    items["Show Splats"].default_value = True
    items["Splat Size"].default_value, items["Splat Size"].min_value = 1.0, 0.0
    items["Min Opacity"].default_value, items["Min Opacity"].min_value = 1.0 / 255.0, 0.0
    items["Point Radius"].default_value, items["Point Radius"].min_value = 0.0008, 0.0
    items["Focal"].default_value, items["Focal"].min_value = 0.0, 0.0
    items["Focal"].description = "Camera focal length in pixels: > 0 draws camera-facing splats like gsplat"
    g = _G(ng)
    gi, go = g.node("NodeGroupInput"), g.node("NodeGroupOutput")
    grid = g.node("GeometryNodeMeshGrid")
    grid.inputs["Size X"].default_value = grid.inputs["Size Y"].default_value = 2.0
    grid.inputs["Vertices X"].default_value = grid.inputs["Vertices Y"].default_value = 2
    quad = g.store(grid.outputs["Mesh"], "splat_uv", "FLOAT_VECTOR", g.node("GeometryNodeInputPosition").outputs[0])
    setm = g.node("GeometryNodeSetMaterial")
    g.link(quad, setm.inputs["Geometry"])
    g.link(gi.outputs["Material"], setm.inputs["Material"])
    sel = g.node("FunctionNodeCompare", data_type="FLOAT", operation="GREATER_EQUAL")
    g.link(g.attr("splat_opacity", "FLOAT"), sel.inputs[0])
    g.link(gi.outputs["Min Opacity"], sel.inputs[1])
    iop = g.node("GeometryNodeInstanceOnPoints")
    g.link(_drawn_attributes_only(g, gi.outputs["Geometry"]), iop.inputs["Points"])
    g.link(sel.outputs[0], iop.inputs["Selection"])
    g.link(setm.outputs[0], iop.inputs["Instance"])
    facing_rot, facing_scale = _camera_facing(g, gi)
    facing = g.node("FunctionNodeCompare", data_type="FLOAT", operation="GREATER_THAN")
    g.link(gi.outputs["Focal"], facing.inputs[0])
    rot_sw = g.node("GeometryNodeSwitch", input_type="ROTATION")
    g.link(facing.outputs[0], rot_sw.inputs["Switch"])
    g.link(g.attr("display_rotation", "QUATERNION"), rot_sw.inputs["False"])
    g.link(facing_rot, rot_sw.inputs["True"])
    g.link(rot_sw.outputs[0], iop.inputs["Rotation"])
    scale_sw = g.node("GeometryNodeSwitch", input_type="VECTOR")
    g.link(facing.outputs[0], scale_sw.inputs["Switch"])
    g.link(g.attr("display_scale", "FLOAT_VECTOR"), scale_sw.inputs["False"])
    g.link(facing_scale, scale_sw.inputs["True"])
    size = g.math("MULTIPLY", gi.outputs["Splat Size"], SIGMA_EXTENT)
    g.link(g.vmath("SCALE", scale_sw.outputs[0], scale=size), iop.inputs["Scale"])
    pts = g.node("GeometryNodeMeshToPoints")
    g.link(gi.outputs["Geometry"], pts.inputs["Mesh"])
    g.link(gi.outputs["Point Radius"], pts.inputs["Radius"])
    sw = g.node("GeometryNodeSwitch", input_type="GEOMETRY")
    g.link(gi.outputs["Show Splats"], sw.inputs["Switch"])
    g.link(pts.outputs[0], sw.inputs["False"])
    g.link(iop.outputs[0], sw.inputs["True"])
    g.link(_viewport_or_render(g, sw.outputs[0], gi.outputs["Geometry"]), go.inputs["Geometry"])
    return ng


def build_material():
    mat = bpy.data.materials.get(MATERIAL) or bpy.data.materials.new(MATERIAL)
    use_material_nodes(mat)
    tree = mat.node_tree
    tree.nodes.clear()
    g = _G(tree)
    # instance attributes in the viewport, point attributes of the realized quads in final renders
    # (``_realized_for_render``): the lookup that does not apply reads zero, so the sum is the value
    col = g.node("ShaderNodeMix", data_type="RGBA", blend_type="ADD")
    col.inputs["Factor"].default_value = 1.0
    opa = g.node("ShaderNodeMath", operation="ADD")
    for k, kind in enumerate(("INSTANCER", "GEOMETRY")):
        g.link(g.node("ShaderNodeAttribute", attribute_type=kind, attribute_name="splat_color").outputs["Color"],
               col.inputs[6 + k])
        g.link(g.node("ShaderNodeAttribute", attribute_type=kind, attribute_name="splat_opacity").outputs["Fac"],
               opa.inputs[k])
    uv = g.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="splat_uv")
    r2 = g.vmath("DOT_PRODUCT", uv.outputs["Vector"], uv.outputs["Vector"])
    gauss = g.math("EXPONENT", g.math("MULTIPLY", r2, -0.5 * SIGMA_EXTENT ** 2))
    alpha = g.math("MULTIPLY", gauss, opa.outputs[0])
    alpha = g.math("MINIMUM", alpha, 0.999)
    emit = g.node("ShaderNodeEmission")
    g.link(col.outputs[2], emit.inputs["Color"])
    emit.inputs["Strength"].default_value = 1.0
    transp = g.node("ShaderNodeBsdfTransparent")
    mix = g.node("ShaderNodeMixShader")
    g.link(alpha, mix.inputs["Fac"])
    g.link(transp.outputs[0], mix.inputs[1])
    g.link(emit.outputs[0], mix.inputs[2])
    out = g.node("ShaderNodeOutputMaterial")
    g.link(mix.outputs[0], out.inputs["Surface"])
    set_surface_render_method(mat, "DITHERED")
    # seen by camera rays only (no light bounces): as lights, 100k emissive quads cost Cycles a light
    # tree (about 3 s at 100k splats) and shadow rays at every transparent hit, for no visible change
    mat.cycles.emission_sampling = "NONE"
    mat.use_backface_culling = False
    return mat


def ensure_groups():
    """The binding/display groups and the material, rebuilt when missing (shared by all avatars)."""
    b = bpy.data.node_groups.get(BINDING_GROUP) or build_binding_group()
    d = bpy.data.node_groups.get(DISPLAY_GROUP) or build_display_group()
    m = bpy.data.materials.get(MATERIAL) or build_material()
    return b, d, m
