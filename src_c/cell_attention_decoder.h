/*
 * The attention LSTM decoder of CELLS.md (cell_attention_decoder.c): what it needs beyond the
 * generic cell interface of li_cells.h, because its memory M (S, B, Dm) and lengths belong to
 * one sequence, not to the cell.
 *
 * A caller fills an li_attention_memory for a sequence (M, lengths, and two float areas of the
 * sizes below), calls li_attention_set_memory once (it checks the lengths and computes the
 * keys K = M Wm^T or Wg M into mem->keys), and then passes it as io->memory to every
 * li_rcell_run of that sequence (a whole run, or stream steps of T = 1). The memory's work
 * area is the per-position scratch of a step, so one memory serves one run at a time.
 */
#ifndef LI_CELL_ATTENTION_DECODER_H
#define LI_CELL_ATTENTION_DECODER_H

#include "li_cells.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The attention variants, as array 0's first size. */
enum li_attention_kind {
    LI_ATTENTION_ADDITIVE = 0,
    LI_ATTENTION_GENERAL = 1,
    LI_ATTENTION_DOT = 2,
    LI_ATTENTION_LOCATION = 3
};

typedef struct li_attention_memory {
    int S, B;
    const float *memory;    /* [S][B][Dm], time-major as the op's input */
    const int32_t *lengths; /* [B] valid positions, each in [1, S]; NULL: all S */
    float *keys;            /* li_attention_keys_floats(cell, S, B): [S][B][Kp] */
    float *work;            /* li_attention_work_floats(cell, S) */
} li_attention_memory;

/* Floats of the keys of a memory of S x B rows (0 for dot attention, which scores M). */
size_t li_attention_keys_floats(const li_rcell *cell, int S, int B);
/* Floats of the per-step work area (scores, energies, the padded location input). */
size_t li_attention_work_floats(const li_rcell *cell, int S);
/* Checks S, B and the lengths, then computes mem->keys. 0, or negative (nothing usable). */
int li_attention_set_memory(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                            li_attention_memory *mem);

/* Generation (the cell compiled with its head and embedding, vocab V > 0): from the states
 * in io->state (B rows, io->memory set), feed bos's embedding, then each step's token's
 * embedding, for at most max_steps steps. temperature 0: the token is the argmax of the
 * logits (the first on ties); > 0: drawn from softmax(logits / temperature) by one uniform
 * u = (splitmix64(seed) >> 11) * 2^-53 per row still running, rows in order, the first token
 * whose cumulative weight exceeds u * sum. tokens: [B][max_steps] int64; a row that emitted
 * eos (-1: none) writes eos at every later step. Stops early once every row has emitted eos;
 * returns the steps run (>= 1), or a negative value for invalid arguments. io->x, io->y are
 * unused; io->scratch holds li_attention_generate_scratch_floats(cell, B) floats. */
size_t li_attention_generate_scratch_floats(const li_rcell *cell, int B);
int li_attention_generate(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                          const li_rcell_io *io, int64_t bos, int64_t eos, int max_steps,
                          float temperature, uint64_t seed, int64_t *tokens);

#ifdef __cplusplus
}
#endif
#endif /* LI_CELL_ATTENTION_DECODER_H */
