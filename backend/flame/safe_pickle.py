"""A pickle reader for FLAME files that runs no code and allocates nothing the file cannot justify.

Two dangers of a tampered ``.pkl`` and how each is closed:

* **code**: only an explicit allow-list of harmless callables resolves (numpy array/dtype/scalar
  reconstruction, ``copyreg._reconstructor``, a few builtin containers); chumpy and scipy.sparse
  classes become :class:`Stub` subclasses that just keep their pickled state. Anything else raises
  :class:`Disallowed` before it is called.
* **memory**: a 40-byte file can say ``bytearray(10**10)``, ``numpy.ndarray((10**10,))`` or
  ``str(<a list holding a big bytes 10 000 times>)``. Every allow-listed constructor that can
  allocate is replaced by a guard that computes the size first and charges it to a per-load
  budget (:data:`ALLOC_SLACK` plus twice the file's size; arrays and strings of a real FLAME file
  come from its own raw bytes and charge almost nothing). Over budget raises
  :class:`AllocationRefused` before the allocation. ``BUILD`` on arrays and dtypes is checked too
  (object dtypes are refused: their payload would be raw pointers; an array state must carry
  exactly the bytes its shape needs).

The guards are types where the original is a type (``bytes``, ``list``, ``numpy.ndarray``, ...), so
``NEWOBJ`` and ``copyreg._reconstructor`` reach the guard as well. The reader is the pure-Python
``pickle._Unpickler`` (its ``BUILD`` can be checked); FLAME files hold a few large raw arrays, so
this costs little.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import contextvars
import copyreg
import io
import math
import pickle
from typing import Any

import numpy as np

#: bytes a pickle may allocate through constructors beyond twice its own size
ALLOC_SLACK = 16 * 2**20

_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("flame_pickle_budget", default=None)


class Disallowed(Exception):
    """The pickle names a global that is not on the allow-list (nothing was called)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class AllocationRefused(Exception):
    """The pickle asks a constructor for more memory than the file can justify (nothing allocated)."""

    def __init__(self, what: str, nbytes: int):
        super().__init__(f"{what}: {nbytes} bytes")
        self.what, self.nbytes = what, int(nbytes)


class Stub:
    """Stands in for a pickled class we refuse to import; keeps whatever state it is given."""

    _args: tuple = ()
    _state: Any = None  # stays None when the pickle builds the object without state

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        _charge(8 * len(args), f"{cls.__name__} arguments")
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # copyreg._reconstructor may call it
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class ChumpyStub(Stub):
    """A chumpy ``Ch``: pickled as ``__dict__`` whose value array lives under ``'x'``."""


class SparseStub(Stub):
    """A scipy.sparse matrix: pickled as ``__dict__`` (data/indices/indptr or row/col, shape)."""

    fmt = "?"


class _CscStub(SparseStub):
    fmt = "csc"


class _CsrStub(SparseStub):
    fmt = "csr"


class _CooStub(SparseStub):
    fmt = "coo"


# ---------------------------------------------------------------------------------------------
# Allocation budget and guarded constructors
# ---------------------------------------------------------------------------------------------


def _charge(nbytes: int, what: str) -> None:
    """Take ``nbytes`` from the current load's budget, or refuse before anything is allocated."""
    budget = _BUDGET.get()
    if budget is None:  # used outside restricted_load: no limit to enforce
        return
    if nbytes < 0 or nbytes > budget[0]:
        raise AllocationRefused(what, nbytes)
    budget[0] -= nbytes


def _arg_bytes(x: Any, what: str) -> int:
    """Bytes a builtin constructor allocates from its first argument ``x``."""
    if isinstance(x, (bool, float, complex)) or x is None:
        return 64
    if isinstance(x, (int, np.integer)):  # bytes(n), bytearray(n): n zero bytes
        return abs(int(x))
    if isinstance(x, str):
        return 4 * len(x)
    if isinstance(x, (bytes, bytearray)):
        return len(x)
    if isinstance(x, np.ndarray):
        return 64 * len(x) + int(x.nbytes) if x.ndim else int(x.nbytes)
    if hasattr(x, "__len__"):
        return 16 * len(x)
    raise AllocationRefused(f"{what} of a {type(x).__name__}", -1)


def _guarded_builtin(base: type) -> type:
    name = base.__name__

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if name == "str" and args and not isinstance(args[0], (str, bytes, bytearray, int, float, bool)):
            raise AllocationRefused(f"str() of a {type(args[0]).__name__}", -1)  # repr() multiplies sizes
        _charge(sum(_arg_bytes(a, f"{name}()") for a in args[:1]) + 64, f"{name}()")
        return base(*args, **kwargs)

    return type(f"guarded_{name}", (base,), {"__new__": __new__, "__module__": __name__})


def _itemsize(dtype: Any, what: str) -> int:
    dt = dtype if isinstance(dtype, np.dtype) else _guarded_dtype(dtype)
    if dt.hasobject:
        raise Disallowed("numpy", f"{what} with an object dtype")
    return int(dt.itemsize)


def _shape_count(shape: Any) -> int:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(d) < 0 for d in dims):
        raise ValueError(f"negative dimension in {dims}")
    return math.prod(int(d) for d in dims)


def _guarded_dtype(*args: Any, **kwargs: Any) -> np.dtype:
    dt = np.dtype(*args, **kwargs)  # a dtype descriptor allocates no array memory
    if dt.hasobject:
        raise Disallowed("numpy", "dtype(object)")
    return dt


class _GuardedNdarray(np.ndarray):
    """``numpy.ndarray(shape, dtype, buffer, ...)`` with the allocation charged first."""

    def __new__(cls, shape: Any, dtype: Any = float, buffer: Any = None, *args: Any, **kwargs: Any) -> np.ndarray:
        size = _shape_count(shape) * _itemsize(dtype, "ndarray")
        if buffer is None:
            _charge(size, "numpy.ndarray")
        return np.ndarray(shape, dtype, buffer, *args, **kwargs)


def _numpy_callables() -> dict[str, Any]:
    """The numpy functions pickles name, found through numpy itself (their module moved in 2.0)."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    out = {"_reconstruct": reconstruct, "scalar": scalar}
    frombuffer = np.arange(3).__reduce_ex__(5)[0]
    if callable(frombuffer) and getattr(frombuffer, "__name__", "") == "_frombuffer":
        out["_frombuffer"] = frombuffer
    return out


_NP = _numpy_callables()


def _guarded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is _GuardedNdarray:
        subtype = np.ndarray
    if subtype is not np.ndarray:
        raise Disallowed("numpy", f"_reconstruct({getattr(subtype, '__name__', type(subtype).__name__)})")
    _charge(_shape_count(shape) * _itemsize(dtype, "_reconstruct"), "numpy array reconstruction")
    return _NP["_reconstruct"](subtype, shape, dtype)


def _guarded_scalar(dtype: Any, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype):
        raise Disallowed("numpy", f"scalar({type(dtype).__name__})")
    _charge(_itemsize(dtype, "scalar"), "numpy scalar")
    return _NP["scalar"](dtype, *args)


def _guarded_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    _itemsize(dtype, "_frombuffer")  # a view of ``buf``: no allocation, but no object dtypes
    return _NP["_frombuffer"](buf, dtype, shape, order)


def _guarded_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor``: ``base.__new__(cls, state)``; the guards see ``base``'s size."""
    if base is not object and state is not None:
        _charge(_arg_bytes(state, "copyreg._reconstructor"), "copyreg._reconstructor")
    return copyreg._reconstructor(cls, base, state)


def _safe_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of ``bytes`` use it, limited to plain text codecs."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise Disallowed("_codecs", f"encode({encoding!r})")
    return codecs.encode(obj, encoding, errors)


# ---------------------------------------------------------------------------------------------
# Allow-list and the reader
# ---------------------------------------------------------------------------------------------


def _build_allow_list() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("copyreg", "_reconstructor"): _guarded_reconstructor,
        ("copyreg", "__newobj__"): copyreg.__newobj__,  # cls.__new__: cls is itself a guard or stub
        ("_codecs", "encode"): _safe_encode,
        ("numpy", "ndarray"): _GuardedNdarray,
        ("numpy", "dtype"): _guarded_dtype,
    }
    for name in ("object", "int", "float", "complex", "bool", "slice"):  # allocate only what they parse
        allowed[("builtins", name)] = getattr(builtins, name)
    for name in ("set", "frozenset", "list", "dict", "tuple", "bytearray", "bytes", "str"):
        allowed[("builtins", name)] = _guarded_builtin(getattr(builtins, name))
    for core in ("numpy.core", "numpy._core"):
        for sub in ("multiarray", "_multiarray_umath"):
            allowed[(f"{core}.{sub}", "_reconstruct")] = _guarded_reconstruct
            allowed[(f"{core}.{sub}", "scalar")] = _guarded_scalar
            allowed[(f"{core}.{sub}", "ndarray")] = _GuardedNdarray
            allowed[(f"{core}.{sub}", "dtype")] = _guarded_dtype
        if "_frombuffer" in _NP:
            allowed[(f"{core}.numeric", "_frombuffer")] = _guarded_frombuffer
    for fmt, stub in (("csc", _CscStub), ("csr", _CsrStub), ("coo", _CooStub)):
        for mod in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse"):
            for cls in (f"{fmt}_matrix", f"{fmt}_array"):
                allowed[(mod, cls)] = stub
    return allowed


_ALLOWED = _build_allow_list()
#: dtype flag bits that make numpy treat item bytes as object pointers (REFCOUNT/HASOBJECT, IS_POINTER)
_POINTER_FLAGS = 0x01 | 0x04


def _check_array_state(inst: np.ndarray, state: Any) -> None:
    """An ndarray ``BUILD``: ``(version, shape, dtype, fortran, raw bytes)`` of exactly the right size."""
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
        raise Disallowed("numpy", "ndarray state of an unknown form")
    shape, dtype, raw = state[-4], state[-3], state[-1]
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise Disallowed("numpy", "ndarray state with an object dtype")
    if not isinstance(raw, (bytes, bytearray, str)):
        raise Disallowed("numpy", f"ndarray state with {type(raw).__name__} data")
    need = _shape_count(shape) * int(dtype.itemsize)
    if need != len(raw):
        raise AllocationRefused(f"an array of shape {tuple(shape)} from {len(raw)} bytes of data", need)


def _check_dtype_state(inst: np.dtype, state: Any) -> None:
    """A dtype ``BUILD`` may set the byte order, nothing else (FLAME files hold plain numeric dtypes)."""
    if not isinstance(state, tuple) or len(state) < 8:
        raise Disallowed("numpy", "dtype state of an unknown form")
    flags = state[7]
    if not isinstance(flags, int) or flags & _POINTER_FLAGS:
        raise Disallowed("numpy", "dtype state with object/pointer flags")
    own = inst.__reduce__()[2]
    if state[2:] != own[2:] or state[1] not in ("<", ">", "=", "|"):  # byte order may change, nothing else
        raise Disallowed("numpy", f"dtype state {state!r} that changes {inst}")


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler: allow-listed globals only, ``BUILD`` on arrays/dtypes checked."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names (copy_reg, __builtin__, ...) as the stock unpickler maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStub
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise Disallowed(module, name) from None

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        elif isinstance(inst, np.ndarray):
            _check_array_state(inst, state)
        elif not isinstance(inst, Stub):
            raise Disallowed(type(inst).__module__, f"{type(inst).__name__} with pickled state")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 strings as latin-1) under the allow-list and an allocation budget.

    Raises :class:`Disallowed` or :class:`AllocationRefused` before the offending call runs; other
    damage surfaces as the usual pickle/numpy exceptions.
    """
    token = _BUDGET.set([ALLOC_SLACK + 2 * len(data)])
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    finally:
        _BUDGET.reset(token)
