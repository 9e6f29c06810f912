"""Hand-made FLAME pickles that ask for huge allocations are refused before anything is allocated.

Each payload is written opcode by opcode (a few dozen bytes) and would allocate gigabytes, or crash
numpy, through an allow-listed constructor; ``load_flame`` must answer ``FLAME_INVALID`` with a
small ``tracemalloc`` peak (numpy reports its buffers to tracemalloc too).
"""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest

from backend.errors import MVP4DError
from backend.flame.io import load_flame
from backend.flame.safe_pickle import ALLOC_SLACK, restricted_load

HUGE = 10**10  # 10 GB


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def long1(n: int) -> bytes:
    enc = pickle.encode_long(n)
    return b"\x8a" + bytes([len(enc)]) + enc


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"


P = b"\x80\x02"  # protocol 2 header
NDARRAY0 = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), long1(0) + b"\x85", text("b"))


def dtype(code: str) -> bytes:
    return call(glob("numpy", "dtype"), text(code), b"\x89\x88")


PAYLOADS: dict[str, bytes] = {
    "bytearray(n)": P + call(glob("builtins", "bytearray"), long1(HUGE)) + b".",
    "py2 bytearray(n)": P + call(glob("__builtin__", "bytearray"), long1(HUGE)) + b".",
    "bytes(n)": P + call(glob("builtins", "bytes"), long1(HUGE)) + b".",
    "NEWOBJ bytes(n)": P + glob("builtins", "bytes") + long1(HUGE) + b"\x85\x81.",
    "copyreg.__newobj__(bytes, n)": P + call(glob("copyreg", "__newobj__"), glob("builtins", "bytes"), long1(HUGE)) + b".",
    "copyreg._reconstructor(bytes, bytes, n)": P
    + call(glob("copy_reg", "_reconstructor"), glob("builtins", "bytes"), glob("builtins", "bytes"), long1(HUGE)) + b".",
    "numpy.ndarray(shape)": P + call(glob("numpy", "ndarray"), long1(HUGE) + b"\x85") + b".",
    "NEWOBJ numpy.ndarray(shape)": P + glob("numpy", "ndarray") + long1(HUGE) + b"\x85\x85\x81.",
    "_reconstruct(ndarray, huge shape)": P
    + call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), long1(HUGE) + b"\x85", text("f8")) + b".",
    "_reconstruct(object dtype)": P
    + call(glob("numpy._core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), long1(10**9) + b"\x85", text("O")) + b".",
    "array state with object dtype": P + NDARRAY0
    + b"(" + long1(1) + long1(10**9) + b"\x85" + dtype("O8") + b"\x89" + b"]" + long1(1) + b"a" + b"tb.",
    "array state larger than its data": P + NDARRAY0
    + b"(" + long1(1) + long1(HUGE) + b"\x85" + dtype("f8") + b"\x89" + b"U\x08" + b"\0" * 8 + b"tb.",
    "dtype state with pointer flags": P + dtype("V8")
    + b"(" + long1(3) + text("|") + b"NNN" + long1(8) + long1(1) + long1(0x3F) + b"tb.",
    "numpy scalar of a 2 GB dtype": P + call(glob("numpy.core.multiarray", "scalar"), dtype("V2000000000"), b"U\x01x") + b".",
    # a 1 MB bytes referenced 10 000 times, then str() of the list: repr would need 40 GB
    "str(list of big bytes)": P + call(glob("builtins", "bytes"), long1(10**6)) + b"q\x00" + b"]("
    + b"h\x00" * 10_000 + b"e" + b"q\x01" + call(glob("builtins", "str"), b"h\x01") + b".",
    # many allocations each under the budget add up
    "40 x bytes(1 MB)": P + b"(" + call(glob("builtins", "bytes"), long1(10**6)) * 40 + b"t.",
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_allocation_bombs_are_refused_before_allocating(tmp_path, name: str) -> None:
    path = tmp_path / "flame.pkl"
    path.write_bytes(PAYLOADS[name])
    assert path.stat().st_size < 21_000
    tracemalloc.start()
    try:
        with pytest.raises(MVP4DError) as ei:
            load_flame(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.code == "FLAME_INVALID", ei.value
    assert peak < ALLOC_SLACK + 8 * 2**20, f"{name}: peak {peak / 2**20:.1f} MiB"
    assert "\n" not in ei.value.message and ei.value.hint


def test_legitimate_pickles_of_every_protocol_still_load() -> None:
    d = {
        "a": np.arange(6, dtype="<f8").reshape(2, 3), "b": np.arange(4, dtype=np.uint32),
        "f": np.asfortranarray(np.ones((2, 3), np.float32)), "s": np.array(["ab", "c"]),
        "by": b"xyz", "ba": bytearray(b"ab"), "set": {1, 2}, "fs": frozenset([3]), "cx": 1 + 2j, "e": b"",
        "sc": np.float64(3.5), "t": (1, "x"),
    }
    for protocol in range(6):
        out = restricted_load(pickle.dumps(d, protocol=protocol))
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                assert out[k].dtype == v.dtype and np.array_equal(out[k], v), (protocol, k)
            else:
                assert out[k] == v and type(out[k]) is type(v), (protocol, k)


def test_budget_scales_with_the_file() -> None:
    """A small allocation passes; the same allocation is refused once it exceeds the budget."""
    ok = P + call(glob("builtins", "bytes"), long1(2**20)) + b"."
    assert restricted_load(ok) == bytes(2**20)
    with pytest.raises(Exception) as ei:
        restricted_load(P + call(glob("builtins", "bytes"), long1(ALLOC_SLACK + 2**20)) + b".")
    assert type(ei.value).__name__ == "AllocationRefused"
