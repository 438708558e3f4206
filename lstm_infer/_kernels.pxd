# Declarations of the C kernel API in src_c/li_kernels.h. Pure declarations, no code.
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t

cdef extern from "li_kernels.h" nogil:
    enum:
        LI_BLOCK
        LI_BF16_ROUNDED_MIN_ROWS
        LI_CONV_MR
        LI_ISA_SCALAR
        LI_ISA_AVX2
        LI_ISA_AVX512
        LI_ISA_COUNT
        LI_CELL_RNN
        LI_CELL_LSTM
        LI_CELL_GRU
        LI_WEIGHTS_F32
        LI_WEIGHTS_BF16
        LI_WEIGHTS_I8

    ctypedef struct li_activation:
        int kind
        float alpha
        float beta

    ctypedef struct li_cell:
        int cell
        int gates
        int input_size
        int hidden_size
        int state_size
        int hidden_padded
        int weight_format
        const float *w
        const void *w_packed
        const float *r
        const void *r_packed
        const void *rn_packed
        const float *w_scale
        const float *r_scale
        const float *rn_scale
        const float *proj_scale
        const int32_t *w_rowsum
        const int32_t *r_rowsum
        const int32_t *rn_rowsum
        const int32_t *proj_rowsum
        const float *bias
        const float *bias_packed
        const float *bias_rn
        const float *peephole
        const float *proj
        const void *proj_packed
        const float *token_table
        int vocab_size
        float clip
        int input_forget
        int linear_before_reset
        int default_activations
        li_activation act[3]

    ctypedef void (*li_activation_array_fn)(int kind, const float *x, float *y, size_t n)
    ctypedef void (*li_softmax_rows_fn)(float *y, size_t rows, size_t n, size_t ld,
                                        int log_softmax)

    ctypedef void (*li_conv2d_fn)(const float *x, size_t xcs, size_t xrs, int C, int KH,
                                  int KW, int sh, int dh, int dw, int OH, int OW,
                                  const float *wpack, int M, const float *bias, float *y,
                                  size_t ldy, int relu, const float **rows)

    ctypedef void (*li_layernorm_rows_fn)(const float *x, float *y, size_t rows, size_t n,
                                          const float *scale, const float *bias, float eps)

    ctypedef void (*li_tanh_energies_fn)(const float *q, const float *k, size_t ldk, size_t n,
                                         size_t A, const float *v, float *e)

    ctypedef void (*li_matvec_packed_fn)(const void *packed, int K, int G, int blk0, int blk1,
                                         const float *x, int ldx, int rows, const float *bias,
                                         int bgs, float *out, int ogs, int ldo)

    ctypedef struct li_kernels:
        const char *name
        li_matvec_packed_fn matvec_f32
        li_activation_array_fn activation_array
        li_softmax_rows_fn softmax_rows
        li_conv2d_fn conv2d
        const void *matvec_bf16_rounded  # a function pointer; only tested for NULL here
        li_layernorm_rows_fn layernorm_rows
        li_tanh_energies_fn tanh_energies

    ctypedef void (*li_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                                 float *alpha, float *a, int *lda, float *b, int *ldb,
                                 float *beta, float *c, int *ldc)

    unsigned li_usable_isas()
    int li_cpu_vendor()
    const li_kernels *li_kernels_for(int isa)

    size_t li_direction_scratch_floats(const li_cell *cell, int T, int B)
    int li_run_direction(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm, int T,
                         int B, const float *x, int ldx, const int64_t *tokens,
                         const int *lens, int reverse, float *h, float *c, float *y,
                         ptrdiff_t y_ts, ptrdiff_t y_bs, float *scratch)

    ctypedef struct li_split_sync:
        int parts
        int arrived
        int generation

    size_t li_unit_split_shared_floats(const li_cell *cell, int T, int B, int has_tokens,
                                       int has_lens)
    size_t li_unit_split_part_floats(const li_cell *cell, int B)
    int li_run_direction_part(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                              int T, int B, const float *x, int ldx, const int64_t *tokens,
                              const int *lens, int reverse, float *h, float *c, float *y,
                              ptrdiff_t y_ts, ptrdiff_t y_bs, li_split_sync *sync, int part,
                              float *shared, float *scratch)

    size_t li_stack_step_scratch_floats(const li_cell *const *cells, int n_layers, int B)
    int li_stack_step(const li_cell *const *cells, int n_layers, const li_kernels *kern, int B,
                      const float *x, const int64_t *tokens, float *const *h,
                      float *const *c, float *y, float *scratch)
    size_t li_stack_step_rows_scratch_floats(const li_cell *const *cells, int n_layers, int B)
    int li_stack_step_rows(const li_cell *const *cells, int n_layers, const li_kernels *kern,
                           int capacity, int n, const int32_t *rows, const float *x,
                           const int64_t *tokens, float *const *h_slab, float *const *c_slab,
                           float **h_rows, float **c_rows, float *y, float *scratch)


cdef extern from "li_cells.h" nogil:
    enum:
        LI_RCELL_MAX_STATES
        LI_RCELL_KIND_COUNT

    ctypedef struct li_rcell:
        int kind
        int input_size
        int hidden_size
        int layers
        int modules
        float eps
        int weight_format
        int n_arrays
        const void *const *array
        const int64_t *array_len

    ctypedef struct li_rcell_io:
        int T
        int B
        const float *x
        int ldx
        float *y
        ptrdiff_t y_ts
        ptrdiff_t y_bs
        float *state[4]
        float *scratch
        const void *memory
        void *prep

    int li_rcell_check(const li_rcell *cell)
    size_t li_rcell_scratch_floats(const li_rcell *cell, int T, int B)
    size_t li_rcell_state_floats(const li_rcell *cell, int s, int B)
    int li_rcell_output_size(const li_rcell *cell)
    int li_rcell_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                     const li_rcell_io *io)


cdef extern from "step_program.h" nogil:
    enum:
        LI_STEP_MAX_RANK
        LI_STEP_KIND_COUNT
        LI_STEP_RECURRENT
        LI_STEP_CELL

    ctypedef struct li_step_cell:
        const li_rcell *cell
        li_rcell_io io

    ctypedef struct li_step_recurrent:
        const li_cell *cell[2]
        int reverse[2]
        int T
        int B
        const float *x
        int ldx
        float *h[2]
        float *c[2]
        float *y
        ptrdiff_t y_ts
        ptrdiff_t y_bs
        ptrdiff_t y_ds
        float *scratch

    ctypedef struct li_step_op:
        int kind
        int op
        int rank
        int flags
        int64_t shape[6]
        int64_t sy[6]
        int64_t sa[6]
        int64_t sb[6]
        int64_t n[7]
        float f[4]
        const float *a
        const float *b
        float *y
        const void *aux
        const void *aux2

    int li_step_program_run(const li_step_op *ops, int n, const li_kernels *kern,
                            li_sgemm_fn sgemm)


cdef extern from "pool_planes.h" nogil:
    void li_pool_planes(const li_kernels *kern, const float *x, size_t xps, size_t xrs,
                        int64_t planes, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
                        int64_t sh, int64_t sw, int64_t dh, int64_t dw, int is_sum, float *y)
