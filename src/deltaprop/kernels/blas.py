"""Row-major GEMM on raw pointers, callable from Numba-compiled code.

The matrix products of forward and backward go to the OpenBLAS that NumPy ships
(`numpy.libs/libscipy_openblas64_*.so`, ILP64 CBLAS). The library is made visible to the JIT linker
by name (`llvmlite.binding.load_library_permanently`), so compiled callers reference the symbol,
not an address, and Numba's on-disk cache stays valid across processes.

Kernels: OpenBLAS picks its kernel set for the CPU when it loads, unless `OPENBLAS_CORETYPE`
says otherwise (some machines set it to an older set, e.g. Haswell's AVX2 kernels on an AVX-512
CPU, where they run at about half the speed); `blas_info()` says which set is in use.

Threading model: OpenBLAS runs single-threaded (`set_blas_threads(1)` at import); parallelism comes
from Numba `prange` regions in which each thread multiplies its own slice of the output. No BLAS
thread ever spins while a Numba thread works, so 2 cores are never oversubscribed.

`gemm(ta, tb, m, n, k, alpha, A, ia, lda, B, ib, ldb, beta, C, ic, ldc)` computes
`C[ic:] = alpha * op(A[ia:]) @ op(B[ib:]) + beta * C[ic:]` with flat offsets (in elements) into
1-D or 2-D C-contiguous arrays and leading dimensions, so sub-blocks need no copies.
"""

import ctypes
import glob
import os

import numba
import numpy as np
from llvmlite import binding as llvm
from numba import types

from ._config import JIT

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _find_openblas() -> str:
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    found = sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so*")))
    if not found:
        raise ImportError(
            "deltaprop needs the OpenBLAS bundled with NumPy's PyPI wheels "
            f"(numpy.libs/libscipy_openblas64_*.so); none found next to {np.__file__}. "
            "Install numpy from PyPI (`pip install --force-reinstall numpy`)."
        )
    return found[0]


_LIB_PATH = _find_openblas()
llvm.load_library_permanently(_LIB_PATH)
_lib = ctypes.CDLL(_LIB_PATH)
_lib.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
_lib.scipy_openblas_get_num_threads64_.restype = ctypes.c_int


def blas_info() -> dict:
    """The BLAS the kernels call: its library and the kernel set OpenBLAS chose ("Haswell",
    "SkylakeX", ...)."""
    core = _lib.scipy_openblas_get_corename64_
    core.restype = ctypes.c_char_p
    return {"library": _LIB_PATH, "core": core().decode()}


def set_blas_threads(n: int) -> None:
    """Set OpenBLAS's thread count (deltaprop keeps it at 1; see the module docstring)."""
    _lib.scipy_openblas_set_num_threads64_(int(n))


set_blas_threads(1)

_i32, _i64, _ptr = types.int32, types.int64, types.intp
_sgemm = types.ExternalFunction(
    "scipy_cblas_sgemm64_",
    types.void(_i32, _i32, _i32, _i64, _i64, _i64, types.float32, _ptr, _i64, _ptr, _i64,
               types.float32, _ptr, _i64),
)
_dgemm = types.ExternalFunction(
    "scipy_cblas_dgemm64_",
    types.void(_i32, _i32, _i32, _i64, _i64, _i64, types.float64, _ptr, _i64, _ptr, _i64,
               types.float64, _ptr, _i64),
)


@numba.njit(**JIT)
def _addr(a, offset):
    return np.intp(a.ctypes.data) + np.intp(offset) * a.itemsize


@numba.njit(**JIT)
def gemm(ta, tb, m, n, k, alpha, A, ia, lda, B, ib, ldb, beta, C, ic, ldc):
    if m <= 0 or n <= 0:
        return
    if C.itemsize == 4:
        _sgemm(ROW_MAJOR, TRANS if ta else NO_TRANS, TRANS if tb else NO_TRANS, m, n, k,
               np.float32(alpha), _addr(A, ia), lda, _addr(B, ib), ldb, np.float32(beta),
               _addr(C, ic), ldc)
    else:
        _dgemm(ROW_MAJOR, TRANS if ta else NO_TRANS, TRANS if tb else NO_TRANS, m, n, k,
               np.float64(alpha), _addr(A, ia), lda, _addr(B, ib), ldb, np.float64(beta),
               _addr(C, ic), ldc)
