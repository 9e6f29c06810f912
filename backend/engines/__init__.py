"""Exports for game engines and web viewers, torch-free (numpy only) so the Blender add-on uses them too.

Modules: :mod:`.gltf_builder` (accessors and the binary .glb container), :mod:`.gltf_rig` (the head:
skeleton, skin, morph targets, animation), :mod:`.gltf_splats` (the Gaussians as a skinned, morphing
``KHR_gaussian_splatting`` point primitive, or rigid groups), :mod:`.gltf` (``write_avatar_glb``),
:mod:`.rig_np` (the head rig of an avatar bundle from its FLAME model) and :mod:`.spz` (Niantic's SPZ).

Nothing is imported here eagerly.
"""
