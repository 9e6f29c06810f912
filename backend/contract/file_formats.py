"""Keys of the files the add-on and the backend exchange: animation ``.npz``, FLAME parameter ``.npz``
and the avatar bundle (``avatar.safetensors``; shapes: N Gaussians, F faces, V vertices, T frames)."""

from __future__ import annotations


#: Keys of an animation ``.npz`` (driving sequence of FLAME parameters), T frames.
#: ``expr`` is required; the others default to zeros. Extra expression components beyond the
#: model's are an error; fewer are zero-padded.
ANIMATION_KEYS: dict[str, str] = {
    "expr": "(T, E) expression coefficients",
    "jaw_pose": "(T, 3) jaw axis-angle, radians",
    "neck_pose": "(T, 3) neck axis-angle, radians",
    "eye_pose": "(T, 6) left then right eye axis-angle, radians",
    "global_rot": "(T, 3) head rotation axis-angle relative to the reference pose, radians",
    "transl": "(T, 3) head translation relative to the reference pose, metres",
}

#: Keys of a FLAME parameter file (tracking output, or the add-on's posed rig): one frame.
FLAME_PARAM_KEYS: dict[str, str] = {
    "shape": "(S,) identity coefficients",
    "expr": "(E,) expression coefficients",
    "jaw_pose": "(3,)",
    "neck_pose": "(3,)",
    "eye_pose": "(6,)",
    "global_rot": "(3,) axis-angle of the head in FLAME world",
    "transl": "(3,) metres",
}


BUNDLE_SCHEMA_VERSION = 1

BUNDLE_TENSORS: dict[str, str] = {
    "gaussians.parent_face": "(N,) int32 index of the parent triangle",
    "gaussians.local_position": "(N, 3) float32, triangle-local, in units of the triangle's size",
    "gaussians.local_rotation": "(N, 4) float32 quaternion wxyz, triangle-local",
    "gaussians.log_scale": "(N, 3) float32, log of scale relative to the triangle's size",
    "gaussians.opacity_logit": "(N,) float32",
    "gaussians.sh": "(N, K, 3) float32 spherical-harmonic coefficients, K = (degree + 1)^2",
    "mesh.faces": "(F, 3) int32",
    "mesh.rest_vertices": "(V, 3) float32 FLAME space with identity applied, neutral expression",
    "animation.expr": "(T, E) float32",
    "animation.jaw_pose": "(T, 3) float32",
    "animation.neck_pose": "(T, 3) float32",
    "animation.eye_pose": "(T, 6) float32",
    "animation.global_rot": "(T, 3) float32",
    "animation.transl": "(T, 3) float32",
    "animation.vertices": "(T, V, 3) float16 posed vertices per frame",
    "animation.detail_offsets": "(T, N, 3) float16 optional per-frame fine-detail offsets (local units)",
}
BUNDLE_OPTIONAL = ("animation.detail_offsets",)
BUNDLE_METADATA_KEYS = ("schema_version", "fps", "num_frames", "flame_model_id", "camera_ring", "generator", "settings")
