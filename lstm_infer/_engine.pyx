# Cython wrapper of the C kernels: ISA selection, compiled cells, the whole-sequence driver
# and the streaming stack step. Arguments are checked once here; each call into C then runs
# in one `with nogil:` block. Compiler directives are set in setup.py.
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memmove, memset
from scipy.linalg.cython_blas cimport sgemm

cimport numpy as cnp
import numpy as np

from lstm_infer._kernels cimport (
    LI_BF16_ROUNDED_MIN_ROWS, LI_BLOCK, LI_CONV_MR, LI_CELL_GRU, LI_CELL_LSTM, LI_CELL_RNN,
    LI_ISA_COUNT, LI_WEIGHTS_BF16,
    LI_WEIGHTS_F32, LI_WEIGHTS_I8, li_cell, li_kernels,
    li_kernels_for, li_run_direction, li_direction_scratch_floats, li_sgemm_fn,
    li_run_direction_part, li_split_sync, li_unit_split_part_floats, li_unit_split_shared_floats,
    li_stack_step, li_stack_step_scratch_floats, li_stack_step_rows,
    li_stack_step_rows_scratch_floats, li_usable_isas, li_cpu_vendor,
    LI_STEP_KIND_COUNT, LI_STEP_MAX_RANK, LI_STEP_RECURRENT, li_step_op, li_step_program_run,
    li_step_recurrent, LI_STEP_CELL, li_step_cell, LI_RCELL_MAX_STATES, li_rcell, li_rcell_io,
    li_rcell_check, li_rcell_output_size, li_rcell_run, li_rcell_scratch_floats,
    li_rcell_state_floats, li_pool_planes,
)

cnp.import_array()

BLOCK = LI_BLOCK
# In the order of the LI_ISA_* enum (src_c/li_kernels.h): lowest first.
ISA_NAMES = ("scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "avx512bf16", "amx")
CELL_CODES = {"rnn": LI_CELL_RNN, "lstm": LI_CELL_LSTM, "gru": LI_CELL_GRU}

cdef const li_kernels *_active = NULL
cdef int _active_isa = -1


def available_isas():
    """Names of the kernel variants this CPU and OS can run, lowest first."""
    cdef unsigned bits = li_usable_isas()
    return [ISA_NAMES[i] for i in range(LI_ISA_COUNT)
            if bits & (1u << i) and li_kernels_for(i) != NULL]


def set_isa(str name):
    """Select the kernel variant used from now on (process-wide)."""
    global _active, _active_isa
    if name not in ISA_NAMES:
        raise ValueError(f"unknown ISA {name!r}; expected one of {list(ISA_NAMES)}")
    if name not in available_isas():
        raise ValueError(f"ISA {name!r} is not usable on this machine; "
                         f"available: {available_isas()}")
    cdef int idx = ISA_NAMES.index(name)
    _active = li_kernels_for(idx)
    _active_isa = idx


def isa():
    """Name of the active kernel variant."""
    return ISA_NAMES[_active_isa]


cdef const li_kernels *_table_named(str isa_name) except NULL:
    """The kernel table called ``isa_name`` (a tests' argument), the active one for None."""
    if isa_name is None:
        return _active
    if isa_name not in available_isas():
        raise ValueError(f"ISA {isa_name!r} is not usable on this machine")
    return li_kernels_for(ISA_NAMES.index(isa_name))


def bf16_rounded_min_rows(str isa_name=None):
    """Batch rows from which whole bf16 sequences round activations to bf16 on a table.

    ``None`` when the table (the active one by default) has no bf16 dot product: its bf16
    products keep fp32-accurate activations at every batch size.
    """
    cdef const li_kernels *k = _table_named(isa_name)
    return None if k.matvec_bf16_rounded == NULL else int(LI_BF16_ROUNDED_MIN_ROWS)


def activation_array(str kind, cnp.ndarray x, str isa_name=None):
    """Apply an ISA's vectorised sigmoid or tanh to a float32 array (accuracy tests)."""
    cdef const li_kernels *k = _table_named(isa_name)
    cdef int code
    if kind == "sigmoid":
        code = 2
    elif kind == "tanh":
        code = 1
    else:
        raise ValueError(f"kind must be 'sigmoid' or 'tanh', got {kind!r}")
    cdef float[::1] xs = np.ascontiguousarray(x, dtype=np.float32).ravel()
    out = np.empty(xs.shape[0], dtype=np.float32)
    cdef float[::1] ys = out
    if xs.shape[0]:
        with nogil:
            k.activation_array(code, &xs[0], &ys[0], xs.shape[0])
    return out.reshape(np.shape(x))


# ---- dense layers, softmax and the direct convolution (_engine_products.pxi) ---------------


include "_engine_products.pxi"


# ---- step programs: a whole graph's step in one C call (_engine_step.pxi) -----------------


include "_engine_cells.pxi"
include "_engine_attention.pxi"
include "_engine_step.pxi"


cdef inline const float *_ptr(object arr):
    """Data pointer of a C-contiguous array, or NULL for None."""
    if arr is None:
        return NULL
    return <const float *>cnp.PyArray_DATA(<cnp.ndarray>arr)


WEIGHT_FORMATS = {"float32": LI_WEIGHTS_F32, "bfloat16": LI_WEIGHTS_BF16, "int8": LI_WEIGHTS_I8}
_PACKED_DTYPES = {"float32": np.float32, "bfloat16": np.uint16, "int8": np.int8}


cdef class CellPlan:
    """One direction of one recurrent layer, compiled: packed weights and the C descriptor.

    Built by lstm_infer._plan from a RecurrentLayer; the arrays it is given must be C-contiguous
    (float32, the packed ones of the weight format's dtype) and are kept alive here for as long
    as the C struct points at them.
    """
    cdef li_cell c
    cdef dict _arrays

    def __init__(self, str cell, int input_size, int hidden_size, int state_size,
                 dict arrays, float clip, bint input_forget, bint linear_before_reset,
                 bint default_activations, list activations, str weight_format="float32"):
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {list(WEIGHT_FORMATS)}")
        for key, arr in arrays.items():
            if key.endswith("_packed") and key != "bias_packed":
                want = _PACKED_DTYPES[weight_format]
            elif key.endswith("_rowsum"):
                want = np.int32
            else:
                want = np.float32
            if arr is not None and not (
                isinstance(arr, np.ndarray) and arr.dtype == want and arr.flags.c_contiguous
            ):
                raise TypeError(f"CellPlan array {key!r} must be C-contiguous {np.dtype(want)}")
        if weight_format == "int8" and any(
            arrays.get(k + "_packed") is not None and (
                arrays.get(k + "_scale") is None or arrays.get(k + "_rowsum") is None)
            for k in ("w", "r", "rn", "proj")
        ):
            raise ValueError("int8 weights need their per-row scales and code sums")
        self._arrays = dict(arrays)
        memset(&self.c, 0, sizeof(li_cell))
        self.c.weight_format = WEIGHT_FORMATS[weight_format]
        self.c.w_scale = _ptr(arrays.get("w_scale"))
        self.c.r_scale = _ptr(arrays.get("r_scale"))
        self.c.rn_scale = _ptr(arrays.get("rn_scale"))
        self.c.proj_scale = _ptr(arrays.get("proj_scale"))
        self.c.w_rowsum = <const int32_t *>_ptr(arrays.get("w_rowsum"))
        self.c.r_rowsum = <const int32_t *>_ptr(arrays.get("r_rowsum"))
        self.c.rn_rowsum = <const int32_t *>_ptr(arrays.get("rn_rowsum"))
        self.c.proj_rowsum = <const int32_t *>_ptr(arrays.get("proj_rowsum"))
        self.c.cell = CELL_CODES[cell]
        self.c.gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
        self.c.input_size = input_size
        self.c.hidden_size = hidden_size
        self.c.state_size = state_size
        self.c.hidden_padded = (hidden_size + LI_BLOCK - 1) // LI_BLOCK * LI_BLOCK
        self.c.w = _ptr(arrays["w"])
        self.c.w_packed = _ptr(arrays["w_packed"])
        self.c.r = _ptr(arrays["r"])
        self.c.r_packed = _ptr(arrays["r_packed"])
        self.c.rn_packed = _ptr(arrays.get("rn_packed"))
        self.c.bias = _ptr(arrays["bias"])
        self.c.bias_packed = _ptr(arrays["bias_packed"])
        self.c.bias_rn = _ptr(arrays.get("bias_rn"))
        self.c.peephole = _ptr(arrays.get("peephole"))
        self.c.proj = _ptr(arrays.get("proj"))
        self.c.proj_packed = _ptr(arrays.get("proj_packed"))
        table = arrays.get("token_table")
        if table is not None:
            if table.ndim != 2 or table.shape[1] != self.c.gates * self.c.hidden_padded:
                raise ValueError("token_table must have shape (vocab, gates * padded hidden)")
            self.c.token_table = _ptr(table)
            self.c.vocab_size = table.shape[0]
        self.c.clip = clip
        self.c.input_forget = input_forget
        self.c.linear_before_reset = linear_before_reset
        self.c.default_activations = default_activations
        if len(activations) > 3:
            raise ValueError("at most 3 activations per direction")
        for i, (kind, alpha, beta) in enumerate(activations):
            self.c.act[i].kind = kind
            self.c.act[i].alpha = alpha
            self.c.act[i].beta = beta

    @property
    def input_size(self):
        return self.c.input_size

    def arrays(self):
        """The arrays the C descriptor points into, by name (the same objects, not copies)."""
        return dict(self._arrays)

    @property
    def takes_tokens(self):
        """True when the input projection is a token table (the input is token ids)."""
        return self.c.token_table != NULL

    @property
    def hidden_size(self):
        return self.c.hidden_size

    @property
    def state_size(self):
        return self.c.state_size


cdef struct _DirectionArgs:
    int T, B
    const float *x
    const int64_t *tokens
    const int *lens
    float *h
    float *c
    float *y
    ptrdiff_t y_ts, y_bs


cdef int _direction_args(CellPlan plan, cnp.ndarray x, object lens, float[:, ::1] h, object c,
                         float[:, :, :] y, _DirectionArgs *a) except -1:
    """Check run_direction's arguments; fill a with their pointers (valid while they live)."""
    cdef const float[:, :, ::1] xv
    cdef const int64_t[:, ::1] tv
    memset(a, 0, sizeof(_DirectionArgs))
    if cnp.PyArray_TYPE(x) == cnp.NPY_INT64:
        if plan.c.token_table == NULL:
            raise ValueError("this layer takes float inputs, not token ids")
        tv = x
        a.T, a.B = tv.shape[0], tv.shape[1]
        if a.T and a.B:
            a.tokens = &tv[0, 0]
    else:
        xv = x
        a.T, a.B = xv.shape[0], xv.shape[1]
        if xv.shape[2] != plan.c.input_size:
            raise ValueError(f"input has {xv.shape[2]} features, the layer expects "
                             f"{plan.c.input_size}")
        if a.T and a.B:
            a.x = &xv[0, 0, 0]
    cdef int T = a.T, B = a.B
    if h.shape[0] != B or h.shape[1] != plan.c.state_size:
        raise ValueError(f"h must have shape ({B}, {plan.c.state_size})")
    if y.shape[0] != T or y.shape[1] != B or y.shape[2] != plan.c.state_size or (
            y.strides[2] != sizeof(float)):
        raise ValueError(f"y must have shape ({T}, {B}, {plan.c.state_size}), last axis dense")
    cdef float[:, ::1] cv
    if plan.c.cell == LI_CELL_LSTM:
        if c is None:
            raise ValueError("an LSTM needs a cell state")
        cv = c
        if cv.shape[0] != B or cv.shape[1] != plan.c.hidden_size:
            raise ValueError(f"c must have shape ({B}, {plan.c.hidden_size})")
        if B:
            a.c = &cv[0, 0]
    cdef const int[::1] lens_v
    if lens is not None:
        lens_v = lens
        if lens_v.shape[0] != B:
            raise ValueError(f"sequence_lens must have {B} entries")
        if B:
            a.lens = &lens_v[0]
    if T and B:
        a.h = &h[0, 0]
        a.y = &y[0, 0, 0]
        a.y_ts = y.strides[0] // sizeof(float)
        a.y_bs = y.strides[1] // sizeof(float)
    return 0


def run_direction(CellPlan plan not None, cnp.ndarray x not None, object lens, bint reverse,
                  float[:, ::1] h, object c, float[:, :, :] y):
    """Run one direction over a whole sequence; h (and c) are updated in place.

    x: (T, B, I) float32 input, or (T, B) int64 token ids for a plan with a token table;
    lens: int32 (B,) or None; h: (B, Hr); c: (B, H) for LSTM or None; y: (T, B, Hr) output
    view whose last axis is contiguous (e.g. one direction's slice of a (T, B, D, Hr) array).
    Steps past a row's length are not written.
    """
    cdef _DirectionArgs a
    _direction_args(plan, x, lens, h, c, y, &a)
    if a.T == 0 or a.B == 0:
        return
    cdef size_t n_scratch = li_direction_scratch_floats(&plan.c, a.T, a.B)
    cdef float[::1] scratch = np.empty(n_scratch, dtype=np.float32)
    cdef int rc
    with nogil:
        rc = li_run_direction(&plan.c, _active, <li_sgemm_fn>sgemm, a.T, a.B, a.x,
                              plan.c.input_size, a.tokens, a.lens, reverse, a.h, a.c,
                              a.y, a.y_ts, a.y_bs, &scratch[0])
    if rc == -4:
        raise ValueError(f"a token id is outside [0, {plan.c.vocab_size})")
    if rc != 0:
        raise ValueError(f"recurrent kernel rejected its arguments (code {rc})")


def supports_unit_split(CellPlan plan not None):
    """True when UnitSplit can run this plan (no LSTM projection)."""
    return plan.c.proj == NULL and plan.c.state_size == plan.c.hidden_size


cdef class UnitSplit:
    """run_direction with the units of the layer split among `parts` threads.

    The constructor checks every argument (as run_direction does) and allocates all buffers;
    then each of `parts` threads calls ``run_part(i)`` once, all at the same time: the parts
    wait for each other every step. A part never fails after the checks, so none can be left
    waiting. The arrays passed in are kept alive here.
    """
    cdef CellPlan plan
    cdef object _keep
    cdef _DirectionArgs a
    cdef bint reverse
    cdef li_split_sync sync
    cdef float[::1] shared
    cdef float[:, ::1] scratch

    def __init__(self, CellPlan plan not None, cnp.ndarray x not None, object lens,
                 bint reverse, float[:, ::1] h, object c, float[:, :, :] y, int parts):
        if not supports_unit_split(plan):
            raise ValueError("a layer with a projection cannot be split by units")
        _direction_args(plan, x, lens, h, c, y, &self.a)
        cdef int nblk = plan.c.hidden_padded // LI_BLOCK
        if parts < 1 or parts > nblk:
            raise ValueError(f"parts must be in [1, {nblk}], got {parts}")
        if self.a.tokens != NULL and (x.min() < 0 or x.max() >= plan.c.vocab_size):
            raise ValueError(f"a token id is outside [0, {plan.c.vocab_size})")
        if self.a.lens != NULL and (lens.min() < 0 or lens.max() > self.a.T):
            raise ValueError(f"sequence_lens must be in [0, {self.a.T}]")
        self.plan = plan
        self._keep = (x, lens, h, c, y)
        self.reverse = reverse
        memset(&self.sync, 0, sizeof(li_split_sync))
        self.sync.parts = parts
        cdef int T = max(self.a.T, 1), B = max(self.a.B, 1)
        self.shared = np.zeros(li_unit_split_shared_floats(
            &plan.c, T, B, self.a.tokens != NULL, self.a.lens != NULL), dtype=np.float32)
        self.scratch = np.empty((parts, li_unit_split_part_floats(&plan.c, B)), np.float32)

    @property
    def parts(self):
        return self.sync.parts

    def run_part(self, int part):
        """Run part `part` (0 <= part < parts) to the end; call each part exactly once."""
        if part < 0 or part >= self.sync.parts:
            raise ValueError(f"part must be in [0, {self.sync.parts})")
        if self.a.T == 0 or self.a.B == 0:
            return
        cdef int rc
        with nogil:
            rc = li_run_direction_part(&self.plan.c, _active, <li_sgemm_fn>sgemm, self.a.T,
                                       self.a.B, self.a.x, self.plan.c.input_size,
                                       self.a.tokens, self.a.lens, self.reverse, self.a.h,
                                       self.a.c, self.a.y, self.a.y_ts, self.a.y_bs,
                                       &self.sync, part, &self.shared[0], &self.scratch[part, 0])
        if rc != 0:
            raise ValueError(f"recurrent kernel rejected its arguments (code {rc})")


cdef class StackStepper:
    """Steps a stack of unidirectional layers one timestep at a time, state kept here.

    All buffers are allocated in the constructor; `step` allocates nothing when given `out`.
    """
    cdef const li_cell **cells
    cdef float **h_ptrs
    cdef float **c_ptrs
    cdef float **h_rows
    cdef float **c_rows
    cdef int n_layers, batch, in_size, out_size
    cdef readonly list plans
    cdef readonly list h
    cdef readonly list c
    cdef float[::1] scratch
    cdef float[::1] rows_scratch
    cdef bint has_rows_scratch

    def __cinit__(self, list plans, int batch):
        self.n_layers = len(plans)
        self.cells = <const li_cell **>PyMem_Malloc(max(1, self.n_layers) * sizeof(li_cell *))
        self.h_ptrs = <float **>PyMem_Malloc(max(1, self.n_layers) * sizeof(float *))
        self.c_ptrs = <float **>PyMem_Malloc(max(1, self.n_layers) * sizeof(float *))
        self.h_rows = <float **>PyMem_Malloc(max(1, self.n_layers) * sizeof(float *))
        self.c_rows = <float **>PyMem_Malloc(max(1, self.n_layers) * sizeof(float *))
        if (self.cells == NULL or self.h_ptrs == NULL or self.c_ptrs == NULL
                or self.h_rows == NULL or self.c_rows == NULL):
            raise MemoryError()

    def __init__(self, list plans, int batch):
        if batch <= 0:
            raise ValueError(f"batch_size must be positive, got {batch}")
        if not plans:
            raise ValueError("a stream needs at least one layer")
        self.plans = list(plans)
        self.batch = batch
        self.h = []
        self.c = []
        cdef CellPlan p
        cdef float[:, ::1] hv, cv
        for i, p in enumerate(plans):
            hv = np.zeros((batch, p.c.state_size), dtype=np.float32)
            self.h.append(hv.base)
            self.h_ptrs[i] = &hv[0, 0]
            if p.c.cell == LI_CELL_LSTM:
                cv = np.zeros((batch, p.c.hidden_size), dtype=np.float32)
                self.c.append(cv.base)
                self.c_ptrs[i] = &cv[0, 0]
            else:
                self.c.append(None)
                self.c_ptrs[i] = NULL
            self.cells[i] = &p.c
        self.in_size = (<CellPlan>plans[0]).c.input_size
        self.out_size = (<CellPlan>plans[len(plans) - 1]).c.state_size
        self.scratch = np.zeros(li_stack_step_scratch_floats(self.cells, self.n_layers, batch),
                                dtype=np.float32)

    def __dealloc__(self):
        PyMem_Free(self.cells)
        PyMem_Free(self.h_ptrs)
        PyMem_Free(self.c_ptrs)
        PyMem_Free(self.h_rows)
        PyMem_Free(self.c_rows)

    @property
    def batch(self):
        return self.batch

    @property
    def input_size(self):
        return self.in_size

    @property
    def output_size(self):
        return self.out_size

    cdef int _check_io(self, cnp.ndarray x, cnp.ndarray out, Py_ssize_t n,
                       const float **xp, const int64_t **tp) except -1:
        """Check a step's x (n, I) float32, or (n,) int64 ids with a token table, and out
        (n, Hr_last); set *xp or *tp. Plain ndarray checks by hand: typed memoryviews would
        allocate a view object per call, and this is the per-step path."""
        if self.cells[0].token_table != NULL:
            if not (cnp.PyArray_TYPE(x) == cnp.NPY_INT64 and cnp.PyArray_NDIM(x) == 1
                    and cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_ISBEHAVED_RO(x)
                    and cnp.PyArray_DIM(x, 0) == n):
                raise ValueError(f"expected {n} int64 token id(s), got {x.dtype} {np.shape(x)}")
            tp[0] = <const int64_t *>cnp.PyArray_DATA(x)
        elif not _is_f32_matrix(x, n, self.in_size):
            raise ValueError(f"expected a C-contiguous float32 input of shape ({n}, "
                             f"{self.in_size}), got {x.dtype} {np.shape(x)}")
        else:
            xp[0] = <const float *>cnp.PyArray_DATA(x)
        if not _is_f32_matrix(out, n, self.out_size) or not cnp.PyArray_ISWRITEABLE(out):
            raise ValueError(f"out must be a writable C-contiguous float32 array of shape "
                             f"({n}, {self.out_size})")
        return 0

    def step(self, cnp.ndarray x not None, cnp.ndarray out not None):
        """One timestep: x (B, I) -> out (B, Hr_last); states advance in place.

        With a token table on the first layer, x is instead (B,) int64 token ids.
        Plain ndarray arguments checked by hand: typed memoryviews would allocate a view
        object per call, and this is the per-step path.
        """
        cdef const float *xp = NULL
        cdef const int64_t *tp = NULL
        self._check_io(x, out, self.batch, &xp, &tp)
        cdef float *op = <float *>cnp.PyArray_DATA(out)
        cdef float *sp = &self.scratch[0]
        cdef int rc
        with nogil:
            rc = li_stack_step(self.cells, self.n_layers, _active, self.batch, xp, tp,
                               self.h_ptrs, self.c_ptrs, op, sp)
        if rc == -4:
            raise ValueError(f"a token id is outside [0, {self.cells[0].vocab_size})")
        if rc != 0:
            raise ValueError(f"recurrent kernel rejected its arguments (code {rc})")

    def step_rows(self, cnp.ndarray rows not None, cnp.ndarray x not None,
                  cnp.ndarray out not None):
        """One timestep for the n distinct state rows ``rows`` (int32, (n,)) only, as one
        batch of n: x (n, I) (or (n,) int64 token ids) -> out (n, Hr_last), in the order of
        rows. The other rows keep their state, and so does every row on error (serving: the
        state arrays h, c are a slab of `batch` sessions, see lstm_infer/pool.py).
        """
        if not (cnp.PyArray_TYPE(rows) == cnp.NPY_INT32 and cnp.PyArray_NDIM(rows) == 1
                and cnp.PyArray_IS_C_CONTIGUOUS(rows) and cnp.PyArray_ISBEHAVED_RO(rows)):
            raise ValueError("rows must be a C-contiguous int32 vector")
        cdef int n = <int>cnp.PyArray_DIM(rows, 0)
        if n < 1 or n > self.batch:
            raise ValueError(f"between 1 and {self.batch} rows can be stepped, got {n}")
        cdef const float *xp = NULL
        cdef const int64_t *tp = NULL
        self._check_io(x, out, n, &xp, &tp)
        if not self.has_rows_scratch:  # once per stepper: a plain stream never needs it
            self.rows_scratch = np.zeros(
                li_stack_step_rows_scratch_floats(self.cells, self.n_layers, self.batch),
                dtype=np.float32)
            self.has_rows_scratch = True
        cdef const int32_t *rp = <const int32_t *>cnp.PyArray_DATA(rows)
        cdef float *op = <float *>cnp.PyArray_DATA(out)
        cdef float *sp = &self.rows_scratch[0]
        cdef int rc
        with nogil:
            rc = li_stack_step_rows(self.cells, self.n_layers, _active, self.batch, n, rp, xp,
                                    tp, self.h_ptrs, self.c_ptrs, self.h_rows, self.c_rows, op,
                                    sp)
        if rc == -4:
            raise ValueError(f"a token id is outside [0, {self.cells[0].vocab_size})")
        if rc == -5:
            raise ValueError(f"a row index is outside [0, {self.batch})")
        if rc != 0:
            raise ValueError(f"recurrent kernel rejected its arguments (code {rc})")


cdef inline bint _is_f32_matrix(cnp.ndarray a, Py_ssize_t rows, Py_ssize_t cols):
    # ISBEHAVED_RO: aligned and in native byte order (a '>f4' array is NPY_FLOAT32 too).
    return (cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32 and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISBEHAVED_RO(a) and cnp.PyArray_DIM(a, 0) == rows
            and cnp.PyArray_DIM(a, 1) == cols)


def cpu_vendor():
    """``"intel"``, ``"amd"`` or ``"other"``: the CPU family the default table is chosen for."""
    return ("other", "intel", "amd")[li_cpu_vendor()]


# Which tables the default may not pick, per CPU vendor.
# avx512bf16 differs from avx512vnni in its streaming bf16 product (two VDPBF16PS per weight
# pair, activations split in two bf16 halves to keep fp32-like accuracy, against widening the
# weights to fp32 FMAs) and in the rounded VDPBF16PS products of batched whole sequences.
# Measured with bench/quantized.py --isas (LSTM step, batch 1): on Sapphire Rapids the split
# product is slower (31 vs 25 us at H=256; 24.8 vs 20.6 on 2026-12-06), so Intel keeps
# avx512vnni's widening for steps (amx adds the tile products of batches); on Zen 4 it is
# faster (19.6 vs 24.2 us at H=256, 411 vs 432 us at H=1024), so AMD takes avx512bf16.
# Other vendors: as Intel.
OPT_IN_ISAS = () if cpu_vendor() == "amd" else ("avx512bf16",)


def default_isa():
    """The table picked at import: the best usable one that is not opt-in on this CPU."""
    avail = [n for n in available_isas() if n not in OPT_IN_ISAS]
    return avail[len(avail) - 1]


def _init_isa():
    import os
    avail = available_isas()
    forced = os.environ.get("LSTM_INFER_ISA", "").strip().lower()
    if forced:
        if forced not in ISA_NAMES:
            raise ImportError(f"LSTM_INFER_ISA={forced!r} is not one of {list(ISA_NAMES)}")
        # Forcing can only lower the ISA: an unusable one falls back to the best usable below it.
        allowed = [n for n in avail if ISA_NAMES.index(n) <= ISA_NAMES.index(forced)
                   and (n == forced or n not in OPT_IN_ISAS)]
        set_isa(allowed[len(allowed) - 1])
    else:
        set_isa(default_isa())


_init_isa()
