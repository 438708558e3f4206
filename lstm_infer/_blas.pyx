# cython: language_level=3
"""Row-major float32 matrix products on the engine's BLAS (scipy's cython_blas).

The graph ops (convolution by im2col, batched MatMul, ConvTranspose) need products with
transposes, leading strides and batches that ``_engine.dense`` (x @ W.T over whole rows) does
not take. numpy's own matmul would run on numpy's OpenBLAS, whose thread count ``threads=``
does not govern; these run on the one BLAS ``runtime.threads.blas_threads`` controls.

Every argument is checked here once; the products then run in one ``with nogil:`` block.
"""

cimport numpy as cnp
import numpy as np
from scipy.linalg.cython_blas cimport sgemm

cnp.import_array()

cdef Py_ssize_t _INT_MAX = (1 << 31) - 1


cdef Py_ssize_t _row_stride(cnp.ndarray m, str name) except -1:
    """The leading dimension (in elements) of a 2-D float32 array whose rows are unit-strided."""
    if m.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {m.dtype}")
    cdef Py_ssize_t rows = m.shape[m.ndim - 2], cols = m.shape[m.ndim - 1]
    cdef Py_ssize_t s_col = m.strides[m.ndim - 1], s_row = m.strides[m.ndim - 2]
    if cols > 1 and s_col != 4:
        raise ValueError(f"{name}'s rows must be contiguous (column stride {s_col} bytes)")
    if rows > 1 and (s_row % 4 or s_row < 4 * cols):
        raise ValueError(f"{name}'s row stride {s_row} bytes does not fit {cols} columns")
    cdef Py_ssize_t ld = s_row // 4 if rows > 1 else cols
    return max(ld, cols, 1)


def gemm(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, bint trans_a=False,
         bint trans_b=False, float alpha=1.0, float beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, row-major float32, 2-D or batched 3-D.

    ``op(m)`` is ``m.T`` when ``trans_*`` is set. 2-D operands may have any leading stride
    (slices of larger arrays) but unit-stride rows. With a 3-D ``out`` (batch, M, N), ``a``
    and ``b`` are 3-D with the same batch or a batch stride of 0 (``np.broadcast_to``), or 2-D
    (shared by every batch entry). ``out`` must be C-contiguous per entry and writable; with
    ``beta == 0`` its contents are ignored (NaN included).
    """
    if out.dtype != np.float32 or not out.flags.writeable or out.ndim not in (2, 3):
        raise ValueError("out must be a writable 2-D or 3-D float32 array")
    cdef int batched = out.ndim == 3
    for name, operand in (("a", a), ("b", b)):
        if operand.ndim != 2 and not (batched and operand.ndim == 3):
            raise ValueError(f"{name} must be 2-D{' or 3-D' if batched else ''}, "
                             f"got {operand.ndim}-D")
    cdef Py_ssize_t lda = _row_stride(a, "a"), ldb = _row_stride(b, "b")
    cdef Py_ssize_t ldc = _row_stride(out, "out")
    cdef Py_ssize_t M = a.shape[a.ndim - 1] if trans_a else a.shape[a.ndim - 2]
    cdef Py_ssize_t K = a.shape[a.ndim - 2] if trans_a else a.shape[a.ndim - 1]
    cdef Py_ssize_t Kb = b.shape[b.ndim - 1] if trans_b else b.shape[b.ndim - 2]
    cdef Py_ssize_t N = b.shape[b.ndim - 2] if trans_b else b.shape[b.ndim - 1]
    if K != Kb:
        raise ValueError(f"op(a) is ({M}, {K}) but op(b) is ({Kb}, {N})")
    if out.shape[out.ndim - 2] != M or out.shape[out.ndim - 1] != N:
        raise ValueError(f"out has shape {np.shape(out)}, expected (..., {M}, {N})")
    cdef Py_ssize_t nb = out.shape[0] if batched else 1
    cdef Py_ssize_t sa = 0, sb = 0, sc = 0
    if batched:
        sc = out.strides[0]
        if a.ndim == 3:
            if a.shape[0] != nb:
                raise ValueError(f"a has batch {a.shape[0]}, out has {nb}")
            sa = a.strides[0]
        if b.ndim == 3:
            if b.shape[0] != nb:
                raise ValueError(f"b has batch {b.shape[0]}, out has {nb}")
            sb = b.strides[0]
        if nb > 1 and sc < 4 * M * ldc:
            raise ValueError("out's batch entries overlap")
    if max(M, N, K, lda, ldb, ldc) > _INT_MAX:
        raise ValueError("gemm: a dimension does not fit the BLAS's 32-bit sizes")
    if M == 0 or N == 0 or nb == 0:
        return out
    if K == 0:
        if beta == 0:
            out[...] = 0.0
        else:
            out *= beta
        return out
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the same memory, with
    # the operands swapped. A row-major matrix that is not transposed reads as its transpose
    # in column-major terms, so the transpose flags keep their meaning.
    cdef char ta = b'T' if trans_a else b'N', tb = b'T' if trans_b else b'N'
    cdef int m = <int>M, n = <int>N, k = <int>K
    cdef int ia = <int>lda, ib = <int>ldb, ic = <int>ldc
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    cdef char *pc = <char *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t i
    with nogil:
        for i in range(nb):
            sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *>(pb + i * sb), &ib,
                  <float *>(pa + i * sa), &ia, &beta, <float *>(pc + i * sc), &ic)
    return out
