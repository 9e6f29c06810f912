"""Format code and maths without bpy: cameras, FLAME arrays, binding, bundle, PLY, glTF, jobs.

Nothing in this package imports ``bpy`` (like glTF-Blender-IO's ``io/``), so it runs and is tested in
any Python with numpy; ``mvp4d_blender.blender`` turns it into Blender data.
"""
