# Step programs (src_c/step_program.h), included by _engine.pyx: they run on its active
# kernel table and call CellPlan's C descriptors.
#
# lstm_infer/compile/step_program.py builds the records as dicts (kind, op, rank, flags,
# shape, sy, sa, sb, n, f, and the buffers a, b, y, aux, aux2 as (array, element offset) or
# None; RECURRENT records carry "recurrent": a dict of the li_step_recurrent fields) and has
# checked every extent against its array; here each buffer is checked once more to start
# inside its array, and the arrays are held for as long as the program lives.

STEP_KINDS = {
    "fill": 0, "copy": 1, "gather": 2, "unary": 3, "binary": 4, "gemm": 5, "recurrent": 6,
    "reduce": 7, "softmax": 8, "layernorm": 9, "conv": 10,
    "pool": 11, "cell": 12, "grouped_conv": 13, "matvec": 14,
}
STEP_MAX_RANK = LI_STEP_MAX_RANK

import time


cdef void *_step_pointer(object ref, bint writable) except? NULL:
    """The address of element ``offset`` of ``array`` for ref = (array, offset), or NULL."""
    if ref is None:
        return NULL
    arr, offset = ref
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
        raise TypeError("step program buffers must be C-contiguous arrays")
    if writable and not arr.flags.writeable:
        raise ValueError("a step program output buffer is read-only")
    if not 0 <= offset <= arr.size:
        raise ValueError(f"step program buffer offset {offset} outside an array of {arr.size}")
    cdef Py_ssize_t byte_offset = <Py_ssize_t>offset * <Py_ssize_t>arr.itemsize
    return <void *>(<char *>cnp.PyArray_DATA(<cnp.ndarray>arr) + byte_offset)


cdef int _step_ints(dict record, str key, int64_t *dest, int limit, Py_ssize_t i) except -1:
    values = record.get(key, ())
    if len(values) > limit:
        raise ValueError(f"step record {i}: {key} holds more than {limit} values")
    cdef Py_ssize_t d
    for d in range(len(values)):
        dest[d] = values[d]
    return 0


cdef class StepProgram:
    """A compiled step: li_step_op records run by one C call with the GIL released."""

    cdef li_step_op *ops
    cdef li_step_recurrent *recurrent
    cdef li_step_cell *cells
    cdef int n_ops
    cdef list _keep

    def __cinit__(self):
        self.ops = NULL
        self.recurrent = NULL
        self.cells = NULL
        self.n_ops = 0

    def __init__(self, list records):
        cdef Py_ssize_t n = len(records), i, d
        cdef li_step_op *op
        cdef li_step_recurrent *rec
        cdef CellPlan plan
        n_rec = sum(1 for r in records if r["kind"] == STEP_KINDS["recurrent"])
        n_cell = sum(1 for r in records if r["kind"] == STEP_KINDS["cell"])
        self.ops = <li_step_op *>PyMem_Malloc(max(n, 1) * sizeof(li_step_op))
        self.recurrent = <li_step_recurrent *>PyMem_Malloc(max(n_rec, 1) * sizeof(li_step_recurrent))
        self.cells = <li_step_cell *>PyMem_Malloc(max(n_cell, 1) * sizeof(li_step_cell))
        if self.ops == NULL or self.recurrent == NULL or self.cells == NULL:
            raise MemoryError()
        memset(self.ops, 0, max(n, 1) * sizeof(li_step_op))
        memset(self.recurrent, 0, max(n_rec, 1) * sizeof(li_step_recurrent))
        memset(self.cells, 0, max(n_cell, 1) * sizeof(li_step_cell))
        self._keep = []
        cdef int j = 0, k = 0
        for i in range(n):
            r = records[i]
            op = &self.ops[i]
            op.kind = r["kind"]
            if not 0 <= op.kind < LI_STEP_KIND_COUNT:
                raise ValueError(f"step record {i}: unknown kind {op.kind}")
            op.op = r.get("op", 0)
            op.flags = r.get("flags", 0)
            shape = r.get("shape", ())
            op.rank = len(shape)
            if op.rank > LI_STEP_MAX_RANK:
                raise ValueError(f"step record {i}: rank {op.rank} > {LI_STEP_MAX_RANK}")
            _step_ints(r, "shape", op.shape, LI_STEP_MAX_RANK, i)
            _step_ints(r, "sy", op.sy, LI_STEP_MAX_RANK, i)
            _step_ints(r, "sa", op.sa, LI_STEP_MAX_RANK, i)
            _step_ints(r, "sb", op.sb, LI_STEP_MAX_RANK, i)
            _step_ints(r, "n", op.n, 7, i)
            params = r.get("f", ())
            if len(params) > 4:
                raise ValueError(f"step record {i}: more than 4 parameters")
            for d in range(len(params)):
                op.f[d] = params[d]
            op.a = <const float *>_step_pointer(r.get("a"), False)
            op.b = <const float *>_step_pointer(r.get("b"), False)
            op.y = <float *>_step_pointer(r.get("y"), True)
            op.aux = _step_pointer(r.get("aux"), False)
            op.aux2 = _step_pointer(r.get("aux2"), False)
            for key in ("a", "b", "y", "aux", "aux2"):
                if r.get(key) is not None:
                    self._keep.append(r[key][0])
            if op.kind == LI_STEP_RECURRENT:
                rec = &self.recurrent[j]
                j += 1
                spec = r["recurrent"]
                cells = spec["cells"]
                if not 1 <= len(cells) <= 2:
                    raise ValueError(f"step record {i}: one or two directions")
                for d in range(len(cells)):
                    plan = cells[d]
                    rec.cell[d] = &plan.c
                    rec.reverse[d] = spec["reverse"][d]
                    rec.h[d] = <float *>_step_pointer(spec["h"][d], True)
                    rec.c[d] = <float *>_step_pointer(spec["c"][d], True)
                    self._keep.append(plan)
                rec.T = spec["T"]
                rec.B = spec["B"]
                rec.x = <const float *>_step_pointer(spec["x"], False)
                rec.ldx = spec["ldx"]
                rec.y = <float *>_step_pointer(spec["y"], True)
                rec.y_ts = spec["y_ts"]
                rec.y_bs = spec["y_bs"]
                rec.y_ds = spec["y_ds"]
                rec.scratch = <float *>_step_pointer(spec["scratch"], True)
                for key in ("x", "y", "scratch"):
                    if spec[key] is not None:
                        self._keep.append(spec[key][0])
                self._keep.extend(v[0] for v in list(spec["h"]) + list(spec["c"]) if v is not None)
                op.aux = rec
            elif op.kind == LI_STEP_CELL:
                self._cell_record(&self.cells[k], r["cell"], i)
                k += 1
                op.aux = &self.cells[k - 1]
        self.n_ops = <int>n

    cdef int _cell_record(self, li_step_cell *rc, dict spec, Py_ssize_t i) except -1:
        cdef RCell cell = spec["rcell"]
        rc.cell = &cell.c
        self._keep.append(cell)
        rc.io.T = spec["T"]
        rc.io.B = spec["B"]
        rc.io.x = <const float *>_step_pointer(spec["x"], False)
        rc.io.ldx = spec["ldx"]
        rc.io.y = <float *>_step_pointer(spec["y"], True)
        rc.io.y_ts = spec["y_ts"]
        rc.io.y_bs = spec["y_bs"]
        rc.io.scratch = <float *>_step_pointer(spec["scratch"], True)
        states = spec["states"]
        if len(states) > LI_RCELL_MAX_STATES:
            raise ValueError(f"step record {i}: more than {LI_RCELL_MAX_STATES} cell states")
        cdef Py_ssize_t s
        for s in range(len(states)):
            rc.io.state[s] = <float *>_step_pointer(states[s], True)
        for ref in [spec["x"], spec["y"], spec["scratch"], *states]:
            if ref is not None:
                self._keep.append(ref[0])
        return 0

    def __dealloc__(self):
        PyMem_Free(self.ops)
        PyMem_Free(self.recurrent)
        PyMem_Free(self.cells)

    def __len__(self):
        return self.n_ops

    def run(self):
        """Run every record once on the active kernel table (the GIL released)."""
        cdef int rc
        with nogil:
            rc = li_step_program_run(self.ops, self.n_ops, _active, <li_sgemm_fn>sgemm)
        if rc != 0:
            raise RuntimeError(f"step program record {-1 - rc} failed")


    def profile(self, int repeat=10):
        """Median seconds of each record over ``repeat`` runs of the whole program, record
        by record (where a step's time goes). The program's effects are those of ``repeat``
        runs."""
        cdef int i, r, rc = 0
        cdef double t0
        times = [[0.0] * repeat for _ in range(self.n_ops)]
        for r in range(repeat):
            for i in range(self.n_ops):
                t0 = _monotonic()
                with nogil:
                    rc = li_step_program_run(self.ops + i, 1, _active, <li_sgemm_fn>sgemm)
                times[i][r] = _monotonic() - t0
                if rc != 0:
                    raise RuntimeError(f"step program record {i} failed")
        return [sorted(t)[repeat // 2] for t in times]

    def kinds(self):
        """The kind name of each record, in order."""
        names = {v: k for k, v in STEP_KINDS.items()}
        return [names[self.ops[i].kind] for i in range(self.n_ops)]


cdef inline bint _is_f32_like(object a, cnp.ndarray like):
    """Whether ``a`` is an ndarray (exactly) of float32 in native byte order, C-contiguous
    and aligned, with the shape of ``like``."""
    if not cnp.PyArray_CheckExact(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int nd = cnp.PyArray_NDIM(like), d
    if (cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or cnp.PyArray_NDIM(arr) != nd
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISBEHAVED_RO(arr)):
        return False
    for d in range(nd):
        if cnp.PyArray_DIM(arr, d) != cnp.PyArray_DIM(like, d):
            return False
    return True


cdef class StepIO:
    """A compiled step's per-call path for one input and one output: ``step(x, out)``
    copies x into the program's input view, runs the program and copies its output view
    into out, in one call (what ``view[...] = x; program.run(); out[...] = y`` does, without
    numpy's assignment machinery: a time-axis stream's step, lstm_infer/time_stream.py).

    The views must be float32 C-contiguous arrays (the input one writable) that stay
    alive with the program; both are held here.
    """

    cdef StepProgram program
    cdef cnp.ndarray x_view
    cdef cnp.ndarray y_view
    cdef size_t x_bytes, y_bytes

    def __init__(self, StepProgram program not None, cnp.ndarray x_view not None,
                 cnp.ndarray y_view not None):
        if not _is_f32_like(x_view, x_view) or not cnp.PyArray_ISWRITEABLE(x_view):
            raise ValueError("the input view must be a writable C-contiguous float32 array")
        if not _is_f32_like(y_view, y_view):
            raise ValueError("the output view must be a C-contiguous float32 array")
        self.program = program
        self.x_view = x_view
        self.y_view = y_view
        self.x_bytes = <size_t>cnp.PyArray_NBYTES(x_view)
        self.y_bytes = <size_t>cnp.PyArray_NBYTES(y_view)

    def step(self, object x, object out):
        """Run one step on ``x`` and return ``out`` filled with the output (a new array when
        out is None), or None, having done nothing, when x or out is not a float32
        C-contiguous array of its view's shape (out also writable): the caller's general
        path then handles (or refuses) them."""
        if not _is_f32_like(x, self.x_view):
            return None
        cdef char *op = NULL
        if out is not None:
            if (not _is_f32_like(out, self.y_view)
                    or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
                return None
            op = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef char *xp = <char *>cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef char *xv = <char *>cnp.PyArray_DATA(self.x_view)
        cdef char *yv = <char *>cnp.PyArray_DATA(self.y_view)
        cdef StepProgram prog = self.program
        cdef int rc
        with nogil:
            memmove(xv, xp, self.x_bytes)
            rc = li_step_program_run(prog.ops, prog.n_ops, _active, <li_sgemm_fn>sgemm)
            if rc == 0 and op != NULL:
                memmove(op, yv, self.y_bytes)
        if rc != 0:
            raise RuntimeError(f"step program record {-1 - rc} failed")
        return self.y_view.copy() if op == NULL else out


cdef double _monotonic():
    return time.perf_counter()


def recurrent_scratch_floats(CellPlan plan not None, int T, int B):
    """Scratch floats one direction of ``plan`` needs over T steps of batch B."""
    return li_direction_scratch_floats(&plan.c, T, B)
