"""The add-on <-> backend contract by topic; :mod:`backend.protocol` is the one import that gathers it.

``presets`` (quality presets, camera rings, the settings' choices), ``validation`` (the bounds and the
field checks every ``from_json`` uses, :class:`~backend.contract.validation.Rule`), ``jobspec``
(``job.json``), ``event_schema`` (``events.jsonl`` lines) and ``file_formats`` (animation and FLAME
parameter ``.npz`` keys, the avatar bundle's tensors). Pure Python like the rest of the contract: the
add-on imports these inside Blender, so none imports torch or numpy.
"""
