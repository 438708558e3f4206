# The attention decoder's memory, runs and generation (src_c/cell_attention_decoder.h),
# included by _engine.pyx after _engine_cells.pxi (RCell).
#
# An AttentionMemory holds one sequence's memory M (S, B, Dm), its lengths and the keys
# computed from them once (li_attention_set_memory); run_attention_decoder and
# generate_attention pass it to the cell's C run as io.memory. The state is h, c, ctx and one
# (2, B, S) array holding alpha then alpha_cum.

from libc.stdint cimport uint64_t


cdef extern from "cell_attention_decoder.h" nogil:
    ctypedef struct li_attention_memory:
        int S
        int B
        const float *memory
        const int32_t *lengths
        float *keys
        float *work

    size_t li_attention_keys_floats(const li_rcell *cell, int S, int B)
    size_t li_attention_work_floats(const li_rcell *cell, int S)
    int li_attention_set_memory(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                                li_attention_memory *mem)
    size_t li_attention_generate_scratch_floats(const li_rcell *cell, int B)
    int li_attention_generate(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                              const li_rcell_io *io, int64_t bos, int64_t eos, int max_steps,
                              float temperature, uint64_t seed, int64_t *tokens)


cdef class AttentionMemory:
    """One sequence's memory for an attention decoder cell: M (S, B, Dm) float32, lengths
    (B,) or None, and the keys computed from them at construction."""

    cdef li_attention_memory m
    cdef readonly RCell cell
    cdef readonly object memory, lengths, keys, work
    cdef readonly int S, B

    def __init__(self, RCell cell not None, cnp.ndarray memory not None, lengths=None):
        if cell.kind != "attention_decoder":
            raise ValueError(f"a {cell.kind} cell takes no memory")
        cdef int width = li_rcell_output_size(&cell.c) - cell.c.hidden_size
        if (memory.ndim != 3 or memory.dtype != np.float32 or not memory.flags.c_contiguous
                or memory.shape[2] != width or memory.shape[0] < 1 or memory.shape[1] < 1):
            raise ValueError(f"memory must be a C-contiguous float32 array (S >= 1, B >= 1, "
                             f"{width}), got shape {(<object>memory).shape}")
        self.cell = cell
        self.memory = memory
        self.S = memory.shape[0]
        self.B = memory.shape[1]
        if lengths is not None:
            lengths = np.ascontiguousarray(lengths, np.int32)
            if lengths.shape != (self.B,):
                raise ValueError(f"lengths must have shape ({self.B},)")
        self.lengths = lengths
        self.keys = np.zeros(max(<Py_ssize_t>li_attention_keys_floats(&cell.c, self.S, self.B), 1),
                             np.float32)
        self.work = np.zeros(max(<Py_ssize_t>li_attention_work_floats(&cell.c, self.S), 1),
                             np.float32)
        self.m.S = self.S
        self.m.B = self.B
        self.m.memory = <const float *>cnp.PyArray_DATA(memory)
        self.m.lengths = NULL
        if lengths is not None:
            self.m.lengths = <int32_t *>cnp.PyArray_DATA(<cnp.ndarray>lengths)
        self.m.keys = <float *>cnp.PyArray_DATA(<cnp.ndarray>self.keys)
        self.m.work = <float *>cnp.PyArray_DATA(<cnp.ndarray>self.work)
        cdef int rc
        with nogil:
            rc = li_attention_set_memory(&cell.c, _active, <li_sgemm_fn>sgemm, &self.m)
        if rc != 0:
            raise ValueError(f"memory lengths must be in [1, {self.S}] (code {rc})")


cdef int _attention_io(RCell cell, AttentionMemory mem, list states, li_rcell_io *io) except -1:
    cdef int B = mem.B, H = cell.c.hidden_size
    cdef int Dm = li_rcell_output_size(&cell.c) - H
    if len(states) != 4:
        raise ValueError("states must be [h, c, ctx, alphas]")
    sizes = (B * H, B * H, B * Dm, 2 * B * mem.S)
    for s in range(4):
        st = states[s]
        if (not isinstance(st, np.ndarray) or st.dtype != np.float32
                or not st.flags.c_contiguous or not st.flags.writeable or st.size != sizes[s]):
            raise ValueError(f"attention decoder state {s} must be a writable C-contiguous "
                             f"float32 array of {sizes[s]} values")
        io.state[s] = <float *>cnp.PyArray_DATA(<cnp.ndarray>st)
    io.B = B
    io.memory = &mem.m
    return 0


def run_attention_decoder(RCell cell not None, AttentionMemory mem not None,
                          cnp.ndarray x not None, list states not None, cnp.ndarray y=None,
                          cnp.ndarray scratch=None):
    """Run the decoder over time-major y-inputs x (T, B, E) against ``mem``; ``states``
    [h (B, H), c (B, H), ctx (B, Dm), alphas (2, B, S)] read and updated in place; y
    (T, B, H + Dm) written when given; ``scratch`` (float32, at least
    ``cell.scratch_floats(T, B)``) avoids an allocation."""
    if mem.cell is not cell:
        raise ValueError("the memory was made for another cell")
    if (x.ndim != 3 or x.dtype != np.float32 or not x.flags.c_contiguous
            or x.shape[1] != mem.B or x.shape[2] != cell.c.input_size):
        raise ValueError(f"x must be a C-contiguous float32 array (T, {mem.B}, "
                         f"{cell.c.input_size})")
    cdef int T = x.shape[0], out = li_rcell_output_size(&cell.c)
    if y is not None:
        if (y.dtype != np.float32 or not y.flags.c_contiguous or not y.flags.writeable
                or (<object>y).shape != (T, mem.B, out)):
            raise ValueError(f"y must be a writable C-contiguous float32 array "
                             f"{(T, mem.B, out)}")
    cdef li_rcell_io io
    memset(&io, 0, sizeof(io))
    _attention_io(cell, mem, states, &io)
    cdef size_t need = li_rcell_scratch_floats(&cell.c, T, mem.B)
    if scratch is None or scratch.dtype != np.float32 or not scratch.flags.c_contiguous \
            or <size_t>scratch.size < need:
        scratch = np.empty(max(<Py_ssize_t>need, 1), np.float32)
    io.T = T
    io.x = <const float *>cnp.PyArray_DATA(x)
    io.ldx = cell.c.input_size
    io.y = NULL if y is None else <float *>cnp.PyArray_DATA(y)
    io.y_ts = <ptrdiff_t>mem.B * out
    io.y_bs = out
    io.scratch = <float *>cnp.PyArray_DATA(scratch)
    cdef int rc
    with nogil:
        rc = li_rcell_run(&cell.c, _active, <li_sgemm_fn>sgemm, &io)
    if rc != 0:
        raise RuntimeError(f"attention decoder refused its arguments (code {rc})")


def generate_attention(RCell cell not None, AttentionMemory mem not None, list states not None,
                       long long bos, long long eos, int max_steps, float temperature=0.0,
                       unsigned long long seed=0):
    """Tokens (B, steps <= max_steps) int64 from the states (updated in place): argmax at
    temperature 0, else seeded draws; one C call runs the whole loop
    (li_attention_generate)."""
    if mem.cell is not cell:
        raise ValueError("the memory was made for another cell")
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    cdef li_rcell_io io
    memset(&io, 0, sizeof(io))
    _attention_io(cell, mem, states, &io)
    scratch = np.empty(max(<Py_ssize_t>li_attention_generate_scratch_floats(&cell.c, mem.B), 1),
                       np.float32)
    tokens = np.empty((mem.B, max_steps), np.int64)
    io.scratch = <float *>cnp.PyArray_DATA(scratch)
    cdef int64_t *tp = <int64_t *>cnp.PyArray_DATA(tokens)
    cdef int rc
    with nogil:
        rc = li_attention_generate(&cell.c, _active, <li_sgemm_fn>sgemm, &io, bos, eos,
                                   max_steps, temperature, seed, tp)
    if rc < 0:
        raise RuntimeError(f"attention decoder generation refused its arguments (code {rc})")
    return np.ascontiguousarray(tokens[:, :rc])
