"""``backend.protocol`` gathers the contract modules (``backend/contract/``): every public name of each is
importable from it, and so is every name the add-on reads from it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import backend.protocol as protocol

PARTS = ("presets", "validation", "jobspec", "event_schema", "file_formats")
#: what mvp4d_blender/ reads through backend_link.protocol() (besides the contract modules' own names)
ADDON_NAMES = ("ERROR_CODES", "name_key", "safe_name", "CameraSpec", "JobSpec", "Event", "PRESETS", "GENERATORS",
               "RING_LAYOUTS", "CROP_SCALE", "CAP4D_LICENCE", "ANIMATION_KEYS", "SCHEMA_VERSION", "ADDON_RUN_FILE")


@pytest.mark.parametrize("part", PARTS)
def test_every_public_name_of_the_contract_is_in_protocol(part):
    mod = importlib.import_module(f"backend.contract.{part}")
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    public = [n.name if hasattr(n, "name") else t.id for n in tree.body
              for t in (getattr(n, "targets", None) or [getattr(n, "target", n)])
              if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))
              and isinstance(t, (ast.Name, ast.FunctionDef, ast.ClassDef))]
    public = [n for n in public if not n.startswith("_")]
    assert public, part
    for name in public:
        assert getattr(protocol, name) is getattr(mod, name), f"backend.protocol.{name} is not contract.{part}.{name}"
        assert name in protocol.__all__


def test_the_names_the_addon_reads_are_there():
    missing = [n for n in ADDON_NAMES if not hasattr(protocol, n)]
    assert not missing
    assert sorted(set(protocol.__all__)) == sorted(protocol.__all__)  # no name listed twice


def test_the_contract_modules_import_neither_torch_nor_numpy():
    code = ("import sys; import " + ", ".join(f"backend.contract.{p}" for p in PARTS) +
            "; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
