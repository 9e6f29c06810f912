"""The 4D avatar: Gaussians bound to FLAME triangles, the avatar bundle and its exports.

Modules: :mod:`.binding` (the GaussianAvatars triangle frame and local <-> world transforms, torch;
the single definition everything is tested against), :mod:`.binding_np` (its numpy mirror, for
exports and the Blender side), :mod:`.bundle` (``avatar.safetensors``: numpy + safetensors only, no
torch, because the Blender add-on reads it), :mod:`.export` (3DGS PLY, PLY sequence, CAP4D
animated PLY).

Nothing is imported here eagerly: ``import backend.avatar.bundle`` must not pull in torch.
"""
