"""Build the Blender extension zip: ``python build_addon.py`` -> ``dist/mvp4d-<version>.zip``.

Zip layout (one top folder, which Blender accepts as the package root holding the manifest)::

    mvp4d_blender/blender_manifest.toml      addon_manifest.toml, verbatim
    mvp4d_blender/__init__.py, io/, blender/  the add-on (bpy + numpy only)
    mvp4d_blender/backend_src/               backend/ + pyproject.toml + README.md: the contract the add-on
                                              imports (backend/protocol.py) and what "Install backend" installs
    mvp4d_blender/wheels/*.whl               the manifest's wheels, downloaded unmodified from PyPI
    mvp4d_blender/data/toy_head.npz          the embedded toy head as a plain npz (rigs without a backend)

Wheels are cached in ``build/wheels`` (``pip download --only-binary=:all: --no-deps --platform ...``);
the toy head is exported by the backend interpreter (``--backend-python``, default ``.venv/bin/python``)
and skipped with a warning when that interpreter is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PKG = "mvp4d_blender"
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".part"}


def _files(base: Path):
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if Path(f).suffix not in EXCLUDE_SUFFIXES and not f.startswith("."):
                yield Path(dirpath) / f


def _wheel_platform(filename: str) -> tuple[str, str, str]:
    """(project, version, first platform tag) of a wheel file name."""
    parts = filename[:-len(".whl")].split("-")
    return parts[0], parts[1], parts[-1].split(".")[0]


def fetch_wheels(wheels: list[str], cache: Path, python: str = sys.executable) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for rel in wheels:
        name = Path(rel).name
        target = cache / name
        if not target.is_file():
            project, version, platform = _wheel_platform(name)
            py = re.search(r"-cp(\d)(\d+)-", name)
            pyver = f"{py.group(1)}.{py.group(2)}" if py else "3.11"
            cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", pyver,
                   "--platform", platform, f"{project}=={version}", "-d", str(cache)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        if not target.is_file():
            raise SystemExit(f"pip did not produce {name}; fix the wheels list in addon_manifest.toml")
        out.append(target)
    return out


def export_toy_head(backend_python: str, out: Path) -> Path | None:
    sources = list((ROOT / "backend" / "flame").glob("*.py")) + [ROOT / "backend" / "blender_support.py"]
    if out.is_file() and out.stat().st_mtime > max(p.stat().st_mtime for p in sources):
        return out  # still current: the toy head is deterministic
    if not Path(backend_python).is_file():
        print(f"warning: {backend_python} missing; the zip ships without the toy head npz "
              "(Add FLAME rig then converts it with the configured backend)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([backend_python, "-m", "backend.blender_support", "export-flame", "toy", str(out)], check=True,
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def build(out_dir: Path = ROOT / "dist", backend_python: str = str(ROOT / ".venv" / "bin" / "python")) -> Path:
    manifest_text = (ROOT / "addon_manifest.toml").read_text(encoding="utf-8")
    manifest = tomllib.loads(manifest_text)
    wheels = fetch_wheels(manifest.get("wheels", []), ROOT / "build" / "wheels")
    toy = export_toy_head(backend_python, ROOT / "build" / "toy_head.npz")
    out_dir.mkdir(parents=True, exist_ok=True)
    zpath = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = zpath.with_name(zpath.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{PKG}/blender_manifest.toml", manifest_text)
        for f in _files(ROOT / PKG):
            rel = f.relative_to(ROOT / PKG)
            if rel.parts[0] in ("backend_src", "wheels"):
                continue  # a stale copy in the source tree never ships
            z.write(f, f"{PKG}/{rel.as_posix()}")
        for f in _files(ROOT / "backend"):
            z.write(f, f"{PKG}/backend_src/{f.relative_to(ROOT).as_posix()}")
        for name in ("pyproject.toml", "README.md"):
            z.write(ROOT / name, f"{PKG}/backend_src/{name}")
        for w in wheels:
            z.write(w, f"{PKG}/wheels/{w.name}")
        if toy is not None:
            z.write(toy, f"{PKG}/data/toy_head.npz")
    tmp.replace(zpath)
    return zpath


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    ap.add_argument("--backend-python", default=str(ROOT / ".venv" / "bin" / "python"),
                    help="backend interpreter used to export the toy head")
    args = ap.parse_args(argv)
    print(build(Path(args.out), args.backend_python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
