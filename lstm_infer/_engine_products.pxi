# The engine's products outside the recurrent layers (dense heads, softmax, the graph's direct
# convolution and pooling), textually included into _engine.pyx: they dispatch through its
# active kernel table (_active), so they belong to that module, and live here to keep each
# file one concern.


def dense(cnp.ndarray x, cnp.ndarray weight, object bias, cnp.ndarray out):
    """out = x @ weight.T (+ bias): one sgemm through the engine's BLAS over all rows.

    x (N, K), weight (M, K) like nn.Linear, bias (M,) or None, out (N, M); all float32 and
    C-contiguous (out writable). A (T, B, K) sequence is passed as its (T*B, K) view, so the
    weight is read once per call instead of once per timestep.
    """
    for name, arr in (("x", x), ("weight", weight), ("out", out)):
        if arr.dtype != np.float32 or arr.ndim != 2 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a 2-D C-contiguous float32 array")
    if not out.flags.writeable:
        raise ValueError("out must be writable")
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"weight has shape {(M, weight.shape[1])}, expected ({M}, {K})")
    if out.shape[0] != N or out.shape[1] != M:
        raise ValueError(f"out has shape {(out.shape[0], out.shape[1])}, expected ({N}, {M})")
    if bias is not None:
        if (bias.dtype != np.float32 or bias.ndim != 1 or bias.shape[0] != M
                or not bias.flags.c_contiguous):
            raise ValueError(f"bias must be a C-contiguous float32 array of shape ({M},)")
    if max(N, K, M) >= (1 << 31) - 1:
        raise ValueError("dense: a dimension does not fit the BLAS's 32-bit sizes")
    if N == 0 or M == 0:
        return out
    if K == 0:
        out[...] = 0.0 if bias is None else bias
        return out
    cdef int m = <int>M, n = <int>N, k = <int>K
    cdef float alpha = 1.0, beta = 0.0
    cdef float *c = <float *>cnp.PyArray_DATA(out)
    cdef float *a = <float *>cnp.PyArray_DATA(weight)
    cdef float *b = <float *>cnp.PyArray_DATA(x)
    cdef const float *bp = _ptr(bias)
    cdef Py_ssize_t i
    cdef char ta = b'T', tb = b'N'
    with nogil:
        # Column-major view: out^T (M x N) = op(weight^T) (M x K) * x^T (K x N).
        if bp != NULL:
            for i in range(N):
                memcpy(c + i * M, bp, M * sizeof(float))
            beta = 1.0
        sgemm(&ta, &tb, &m, &n, &k, &alpha, a, &k, b, &k, &beta, c, &m)
    return out


def dense_packed(cnp.ndarray packed, int gates, cnp.ndarray x, object bias, cnp.ndarray out,
                 int blk0=0, int blk1=-1):
    """out[:, g*Hp + u] = bias + x @ W^T over weights packed by ``_plan.pack_gate_blocks``.

    The packed matvec the recurrent layers use, for a dense layer whose (4*Hp, K) weight is
    packed as ``gates`` gate blocks: each block's weights (K x gates x 16 floats) are read
    from memory once and reused from cache by every tile of rows. ``blk0``/``blk1`` pick the
    blocks to compute (threads split a layer by blocks). x (N, K), bias (gates*Hp,) or None,
    out (N, gates*Hp); float32 and C-contiguous.
    """
    if packed.dtype != np.float32 or packed.ndim != 5 or not packed.flags.c_contiguous:
        raise ValueError("packed must be a C-contiguous float32 array from pack_gate_blocks")
    cdef int nblk = <int>packed.shape[0], K = <int>packed.shape[1]
    if packed.shape[2] != gates or packed.shape[3] != LI_BLOCK or packed.shape[4] != 1:
        raise ValueError("packed does not hold float32 blocks of that many gates")
    cdef Py_ssize_t width = <Py_ssize_t>gates * nblk * LI_BLOCK
    for name, arr in (("x", x), ("out", out)):
        if arr.dtype != np.float32 or arr.ndim != 2 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a 2-D C-contiguous float32 array")
    cdef Py_ssize_t N = x.shape[0]
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} features, the packed weight takes {K}")
    if out.shape[0] != N or out.shape[1] != width or not out.flags.writeable:
        raise ValueError(f"out must be a writable array of shape ({N}, {width})")
    if bias is not None and (bias.dtype != np.float32 or bias.shape != (width,)
                             or not bias.flags.c_contiguous):
        raise ValueError(f"bias must be a C-contiguous float32 array of shape ({width},)")
    if blk1 < 0:
        blk1 = nblk
    if not 0 <= blk0 <= blk1 <= nblk:
        raise ValueError(f"blocks [{blk0}, {blk1}) are not within [0, {nblk})")
    if N >= (1 << 31) or width >= (1 << 31):
        raise ValueError("dense_packed: too many rows or features for 32-bit strides")
    cdef const li_kernels *kern = _active
    cdef const void *w = cnp.PyArray_DATA(packed)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const float *bp = _ptr(bias)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int rows = <int>N, ogs = nblk * LI_BLOCK, ldo = <int>width
    if rows and blk1 > blk0:
        with nogil:
            kern.matvec_f32(w, K, gates, blk0, blk1, xp, K, rows, bp, ogs, op, ogs, ldo)
    return out


def softmax_rows(cnp.ndarray y, bint log_softmax=False, object n=None, str isa_name=None):
    """Softmax (or log-softmax) over the last axis of a C-contiguous float32 array, in place.

    With ``n``, only the first ``n`` entries of each row (the rest, e.g. padding, untouched).
    One three-pass kernel per row (src_c: li_softmax_rows_fn). ``isa_name`` picks a kernel
    table other than the active one (tests).
    """
    cdef const li_kernels *kern = _table_named(isa_name)
    if y.dtype != np.float32 or y.ndim < 1 or not y.flags.c_contiguous or not y.flags.writeable:
        raise ValueError("y must be a writable C-contiguous float32 array of rank >= 1")
    cdef size_t ld = <size_t>y.shape[y.ndim - 1]
    cdef size_t cols = ld if n is None else <size_t>n
    if n is not None and not 0 <= n <= ld:
        raise ValueError(f"n must be in [0, {ld}], got {n}")
    cdef size_t rows = <size_t>(y.size // ld) if ld else 0
    cdef float *p = <float *>cnp.PyArray_DATA(y)
    if rows and cols:
        with nogil:
            kern.softmax_rows(p, rows, cols, ld, log_softmax)
    return y


CONV_MR = LI_CONV_MR


def conv2d(cnp.ndarray x, cnp.ndarray wpack, int M, int KH, int KW, int sh, int dh, int dw,
           int OH, int OW, object bias, cnp.ndarray y, bint relu=False, str isa_name=None):
    """Direct convolution of one group (li_conv2d_fn): y (M, OH*OW) from the padded input x
    (C, Hp, Wp), stride 1 along the last dim, weights packed [ceil(M/MR)][C*KH*KW][MR].

    x and y may be views (any channel / row stride, unit last stride); every position the
    window reaches must lie inside x. ``relu`` clamps the stored values at 0 (a fused
    Relu). ``isa_name`` picks a kernel table other than the active
    one (tests).
    """
    cdef const li_kernels *kern = _table_named(isa_name)
    if x.dtype != np.float32 or x.ndim != 3 or (x.shape[2] > 1 and x.strides[2] != 4):
        raise ValueError("x must be a (C, H, W) float32 array with unit-stride rows")
    if min(M, KH, KW, sh, dh, dw, OH, OW) < 1:
        raise ValueError("sizes, strides and dilations must be positive")
    cdef Py_ssize_t C = x.shape[0], Hp = x.shape[1], Wp = x.shape[2]
    if (OH - 1) * <Py_ssize_t>sh + (KH - 1) * <Py_ssize_t>dh >= Hp or \
            OW - 1 + (KW - 1) * <Py_ssize_t>dw >= Wp:
        raise ValueError("the windows reach past the padded input")
    if x.strides[0] % 4 or x.strides[1] % 4 or x.strides[0] < 0 or x.strides[1] < 0:
        raise ValueError("x's strides must be non-negative multiples of 4 bytes")
    cdef Py_ssize_t K = C * KH * KW, tiles = (M + LI_CONV_MR - 1) // LI_CONV_MR
    if K >= (1 << 31) or <Py_ssize_t>OH * OW >= (1 << 31):
        raise ValueError("conv2d: sizes do not fit 32 bits")
    if (wpack.dtype != np.float32 or not wpack.flags.c_contiguous
            or np.shape(wpack) != (tiles, K, LI_CONV_MR)):
        raise ValueError(f"wpack must be C-contiguous float32 of shape {(tiles, K, LI_CONV_MR)}")
    if (y.dtype != np.float32 or y.ndim != 2 or not y.flags.writeable
            or y.shape[0] != M or y.shape[1] != OH * OW or (y.shape[1] > 1 and y.strides[1] != 4)
            or y.strides[0] % 4 or y.strides[0] < 4 * y.shape[1]):
        raise ValueError(f"y must be a writable float32 ({M}, {OH * OW}) array, unit-stride rows")
    if bias is not None and (bias.dtype != np.float32 or bias.shape != (M,)
                             or not bias.flags.c_contiguous):
        raise ValueError(f"bias must be a C-contiguous float32 array of shape ({M},)")
    cdef size_t xcs = <size_t>(x.strides[0] // 4), xrs = <size_t>(x.strides[1] // 4)
    cdef size_t ldy = <size_t>(y.strides[0] // 4)
    cdef const float **rows = <const float **>PyMem_Malloc(K * sizeof(float *))
    if rows == NULL:
        raise MemoryError()
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const float *wp = <const float *>cnp.PyArray_DATA(wpack)
    cdef const float *bp = _ptr(bias)
    cdef float *yp = <float *>cnp.PyArray_DATA(y)
    cdef int c = <int>C
    try:
        with nogil:
            kern.conv2d(xp, xcs, xrs, c, KH, KW, sh, dh, dw, OH, OW, wp, M, bp, yp, ldy, relu,
                        rows)
    finally:
        PyMem_Free(rows)
    return y


def pool2d(cnp.ndarray x, int KH, int KW, int sh, int sw, int dh, int dw, cnp.ndarray y,
           bint is_sum=False, str isa_name=None):
    """Max (or, with ``is_sum``, summed) pooling of planes (li_pool_planes): y (P, OH, OW)
    from the padded input x (P, H, W), y[p, oh, ow] the max / sum over i < KH, j < KW of
    x[p, oh*sh + i*dh, ow*sw + j*dw] (a NaN in a max window gives NaN).

    x may be a view (any plane / row stride, unit last stride); every window must lie inside
    x. y is a writable C-contiguous float32 array that does not overlap x. ``isa_name`` picks
    a kernel table other than the active one (tests).
    """
    cdef const li_kernels *kern = _table_named(isa_name)
    if x.dtype != np.float32 or x.ndim != 3 or (x.shape[2] > 1 and x.strides[2] != 4):
        raise ValueError("x must be a (P, H, W) float32 array with unit-stride rows")
    if x.strides[0] % 4 or x.strides[1] % 4 or x.strides[0] < 0 or x.strides[1] < 0:
        raise ValueError("x's strides must be non-negative multiples of 4 bytes")
    if min(KH, KW, sh, sw, dh, dw) < 1:
        raise ValueError("kernel sizes, strides and dilations must be positive")
    if y.dtype != np.float32 or y.ndim != 3 or not y.flags.c_contiguous or not y.flags.writeable:
        raise ValueError("y must be a writable C-contiguous (P, OH, OW) float32 array")
    cdef Py_ssize_t P = y.shape[0], OH = y.shape[1], OW = y.shape[2]
    if x.shape[0] != P:
        raise ValueError(f"x has {x.shape[0]} planes, y {P}")
    if P == 0 or OH == 0 or OW == 0:
        return y
    if (OH - 1) * <Py_ssize_t>sh + (KH - 1) * <Py_ssize_t>dh >= x.shape[1] or \
            (OW - 1) * <Py_ssize_t>sw + (KW - 1) * <Py_ssize_t>dw >= x.shape[2]:
        raise ValueError("the windows reach past the padded input")
    if np.may_share_memory(x, y):
        raise ValueError("y must not overlap x")
    cdef size_t xps = <size_t>(x.strides[0] // 4), xrs = <size_t>(x.strides[1] // 4)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef float *yp = <float *>cnp.PyArray_DATA(y)
    with nogil:
        li_pool_planes(kern, xp, xps, xrs, P, KH, KW, OH, OW, sh, sw, dh, dw, is_sum, yp)
    return y


def layernorm_rows(cnp.ndarray x, cnp.ndarray y, float eps, object scale=None,
                   object bias=None, str isa_name=None):
    """Layer normalisation of the rows of x (li_layernorm_rows_fn) into y: each last-dim row
    becomes (row - mean) / sqrt(var + eps) * scale + bias (population variance; scale / bias
    None: 1 / 0). x and y are C-contiguous float32 of one shape (y may be x); scale and bias
    C-contiguous float32 vectors of the row length. ``isa_name`` picks a kernel table other
    than the active one (tests).
    """
    cdef const li_kernels *kern = _table_named(isa_name)
    if x.dtype != np.float32 or x.ndim < 1 or not x.flags.c_contiguous:
        raise ValueError("x must be a C-contiguous float32 array of rank >= 1")
    if (y.dtype != np.float32 or not y.flags.c_contiguous or not y.flags.writeable
            or np.shape(y) != np.shape(x)):
        raise ValueError(f"y must be a writable C-contiguous float32 array of shape {np.shape(x)}")
    cdef size_t n = <size_t>x.shape[x.ndim - 1]
    for name, v in (("scale", scale), ("bias", bias)):
        if v is not None and (v.dtype != np.float32 or v.shape != (n,)
                              or not v.flags.c_contiguous):
            raise ValueError(f"{name} must be a C-contiguous float32 array of shape ({n},)")
    if x is not y and np.may_share_memory(x, y):
        raise ValueError("y must be x or not overlap it")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    cdef size_t rows = <size_t>(x.size // n) if n else 0
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef float *yp = <float *>cnp.PyArray_DATA(y)
    cdef const float *sp = _ptr(scale)
    cdef const float *bp = _ptr(bias)
    if rows and n:
        with nogil:
            kern.layernorm_rows(xp, yp, rows, n, sp, bp, eps)
    return y


def tanh_energies(object q, cnp.ndarray k not None, cnp.ndarray v not None, str isa_name=None):
    """The attention decoders' additive scores (li_tanh_energies_fn): a float32 vector e with
    e[j] = sum_i v[i] * tanh(q[i] + k[j, i]) for every row j of k. k is a float32 (n, A) array
    whose rows may lie further apart than A (a view of wider rows) but whose elements are
    contiguous; q (None: zeros) and v are C-contiguous float32 vectors of length A.
    ``isa_name`` picks a kernel table other than the active one (tests).
    """
    cdef const li_kernels *kern = _table_named(isa_name)
    if k.dtype != np.float32 or k.ndim != 2 or (k.size > 1 and k.shape[1] > 1
                                                and k.strides[1] != 4) \
            or (k.shape[0] > 1 and (k.strides[0] < 0 or k.strides[0] % 4)):
        raise ValueError("k must be a float32 (n, A) array with contiguous rows")
    cdef size_t n = <size_t>k.shape[0], A = <size_t>k.shape[1]
    cdef size_t ldk = <size_t>(k.strides[0] // 4) if n > 1 else A
    if n > 1 and ldk < A:
        raise ValueError("k's rows must not overlap")
    for name, a in (("q", q), ("v", v)):  # v is not None (the signature)
        if a is not None and (not isinstance(a, np.ndarray) or a.dtype != np.float32
                              or a.shape != (A,) or not a.flags.c_contiguous):
            raise ValueError(f"{name} must be a C-contiguous float32 array of shape ({A},)")
    e = np.empty(n, np.float32)
    cdef const float *qp = _ptr(q)
    cdef const float *kp = <const float *>cnp.PyArray_DATA(k)
    cdef const float *vp = <const float *>cnp.PyArray_DATA(v)
    cdef float *ep = <float *>cnp.PyArray_DATA(e)
    if n and A:
        with nogil:
            kern.tanh_energies(qp, kp, ldk, n, A, vp, ep)
    elif n:
        e[:] = 0.0
    return e
