# CELLS.md's cells as fused engine ops (src_c/li_cells.h), included by _engine.pyx.
#
# lstm_infer/cells/ builds each kind's arrays in the order its C file documents; RCell hands
# them to li_rcell_check, which verifies every length against the sizes, so no call below can
# make the kernels read past an array. run_rcell checks the data once, then one nogil call.

RCELL_KINDS = {"layer_norm_lstm": 0, "depth_gated_lstm": 1, "clockwork_rnn": 2, "grid_lstm": 3,
               "attention_decoder": 4}
RCELL_MAX_STATES = LI_RCELL_MAX_STATES
# float32 / int32 arrays; packed matrices of bf16 / int8 cells are byte arrays (li_cells.h).
_RCELL_DTYPES = (np.float32, np.int32, np.uint8)
RCELL_WEIGHT_FORMATS = {"float32": 0, "bfloat16": 1, "int8": 2}


cdef class RCell:
    """One compiled cell of CELLS.md: sizes and weight arrays, checked by the C layer."""

    cdef li_rcell c
    cdef const void **_ptrs
    cdef int64_t *_lens
    cdef readonly str kind
    cdef readonly str weight_format
    cdef list _keep

    def __cinit__(self):
        self._ptrs = NULL
        self._lens = NULL

    def __init__(self, str kind, int input_size, int hidden_size, int layers, list arrays,
                 int modules=0, float eps=0.0, str weight_format="float32"):
        if kind not in RCELL_KINDS:
            raise ValueError(f"unknown cell kind {kind!r}")
        if weight_format not in RCELL_WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weight_format!r}")
        cdef Py_ssize_t n = len(arrays), i
        self._ptrs = <const void **>PyMem_Malloc(max(n, 1) * sizeof(void *))
        self._lens = <int64_t *>PyMem_Malloc(max(n, 1) * sizeof(int64_t))
        if self._ptrs == NULL or self._lens == NULL:
            raise MemoryError()
        self._keep = []
        for i in range(n):
            a = arrays[i]
            if (not isinstance(a, np.ndarray) or a.dtype not in _RCELL_DTYPES
                    or not a.flags.c_contiguous):
                raise TypeError(f"{kind} cell array {i} must be C-contiguous float32, int32 "
                                "or (packed bf16 / int8 matrices) uint8")
            self._keep.append(a)
            self._ptrs[i] = cnp.PyArray_DATA(<cnp.ndarray>a)
            self._lens[i] = a.size
        self.kind = kind
        self.c.kind = RCELL_KINDS[kind]
        self.c.input_size = input_size
        self.c.hidden_size = hidden_size
        self.c.layers = layers
        self.c.modules = modules
        self.c.eps = eps
        self.c.weight_format = RCELL_WEIGHT_FORMATS[weight_format]
        self.weight_format = weight_format
        self.c.n_arrays = <int>n
        self.c.array = self._ptrs
        self.c.array_len = self._lens
        cdef int rc = li_rcell_check(&self.c)
        if rc != 0:
            raise ValueError(f"{kind} cell: its arrays do not match its sizes (code {rc})")

    def __dealloc__(self):
        PyMem_Free(self._ptrs)
        PyMem_Free(self._lens)

    @property
    def input_size(self):
        return self.c.input_size

    @property
    def output_size(self):
        return li_rcell_output_size(&self.c)

    @property
    def arrays(self):
        return list(self._keep)

    def state_floats(self, int s, int batch):
        """Floats of state ``s`` for ``batch`` rows (0: the kind has no such state)."""
        return li_rcell_state_floats(&self.c, s, batch)

    def scratch_floats(self, int steps, int batch):
        return li_rcell_scratch_floats(&self.c, steps, batch)


def run_rcell(RCell cell not None, cnp.ndarray x not None, list states not None,
              cnp.ndarray y=None):
    """Run ``cell`` over time-major x (T, B, I); ``states`` (float32, C-contiguous, the
    kind's order) are read and updated in place; y (T, B, output_size) is written when given.
    """
    if x.ndim != 3 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("x must be a C-contiguous float32 array (T, B, I)")
    cdef int T = x.shape[0], B = x.shape[1], s
    if x.shape[2] != cell.c.input_size:
        raise ValueError(f"x has {x.shape[2]} features; the cell takes {cell.c.input_size}")
    cdef int out = li_rcell_output_size(&cell.c)
    if y is not None:
        if (y.dtype != np.float32 or not y.flags.c_contiguous or not y.flags.writeable
                or (<object>y).shape != (T, B, out)):
            raise ValueError(f"y must be a writable C-contiguous float32 array {(T, B, out)}")
    cdef li_rcell_io io
    memset(&io, 0, sizeof(io))
    if len(states) > LI_RCELL_MAX_STATES:
        raise ValueError(f"at most {LI_RCELL_MAX_STATES} states")
    for s in range(LI_RCELL_MAX_STATES):
        want = li_rcell_state_floats(&cell.c, s, B)
        if s >= len(states):
            if want:
                raise ValueError(f"{cell.kind} cell: state {s} is missing")
            continue
        st = states[s]
        if (not isinstance(st, np.ndarray) or st.dtype != np.float32
                or not st.flags.c_contiguous or not st.flags.writeable or st.size != want):
            raise ValueError(f"{cell.kind} cell: state {s} must be a writable C-contiguous "
                             f"float32 array of {want} values")
        io.state[s] = <float *>cnp.PyArray_DATA(<cnp.ndarray>st)
    scratch = np.empty(max(<Py_ssize_t>li_rcell_scratch_floats(&cell.c, T, B), 1), np.float32)
    io.T = T
    io.B = B
    io.x = <const float *>cnp.PyArray_DATA(x)
    io.ldx = cell.c.input_size
    io.y = NULL if y is None else <float *>cnp.PyArray_DATA(y)
    io.y_ts = <ptrdiff_t>B * out
    io.y_bs = out
    io.scratch = <float *>cnp.PyArray_DATA(<cnp.ndarray>scratch)
    cdef int rc
    with nogil:
        rc = li_rcell_run(&cell.c, _active, <li_sgemm_fn>sgemm, &io)
    if rc != 0:
        raise RuntimeError(f"{cell.kind} cell refused its arguments (code {rc})")
