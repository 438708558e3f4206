/*
 * Which kernel tables this CPU and OS can run. An ISA is usable only when the CPU reports
 * the instructions (CPUID) and the OS has enabled saving their registers (XGETBV): a
 * hypervisor or kernel can expose AVX-512 in CPUID yet not save zmm state.
 */
#include "li_kernels.h"

#if defined(LI_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>

static unsigned long long read_xcr0(void) {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static unsigned detect_x86(void) {
    unsigned eax, ebx, ecx, edx, isas = 1u << LI_ISA_SCALAR;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return isas;
    const int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
    if (!osxsave || !avx) return isas;
    const unsigned long long xcr0 = read_xcr0();
    const int ymm_saved = (xcr0 & 0x6) == 0x6;     /* SSE and AVX state */
    const int zmm_saved = (xcr0 & 0xe6) == 0xe6;   /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return isas;
    const unsigned max_leaf7 = eax;
    const int avx2 = (ebx >> 5) & 1;
    const int avx512 = ((ebx >> 16) & 1) && ((ebx >> 17) & 1) /* F, DQ */
                       && ((ebx >> 30) & 1) && ((ebx >> 31) & 1); /* BW, VL */
    const int avx512_vnni = (ecx >> 11) & 1;
    const int amx = ((edx >> 22) & 1) && ((edx >> 24) & 1); /* AMX-BF16, AMX-TILE */
    const int tiles_saved = (xcr0 & 0x60000) == 0x60000;    /* XTILECFG, XTILEDATA */
    int avx_vnni = 0, avx512_bf16 = 0;
    if (max_leaf7 >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
        avx_vnni = (eax >> 4) & 1;
        avx512_bf16 = (eax >> 5) & 1;
    }
    if (ymm_saved && avx2 && fma) {
        isas |= 1u << LI_ISA_AVX2;
        if (avx_vnni) isas |= 1u << LI_ISA_AVX2VNNI;
        if (zmm_saved && avx512) {
            isas |= 1u << LI_ISA_AVX512;
            if (avx512_vnni) isas |= 1u << LI_ISA_AVX512VNNI;
            if (avx512_vnni && avx512_bf16) {
                isas |= 1u << LI_ISA_AVX512BF16;
                /* The tile-data permission is asked for on first use (kernels_amx.c). */
                if (amx && tiles_saved) isas |= 1u << LI_ISA_AMX;
            }
        }
    }
    return isas;
}

/* AMX-INT8 (TDPBSSD): CPUID leaf 7 EDX bit 25. Every CPU with AMX so far has it; checked
 * anyway, since the amx table's usability asks only for AMX-TILE and AMX-BF16. */
static int cpu_has_amx_int8(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (edx >> 25) & 1;
}

/* The derived tables: their base table with the quantized products swapped in. Built once,
 * on the first call (the extension module's import), before any thread can ask. The amx
 * table keeps avx512vnni's widening bf16 product for streaming (faster than the split
 * VDPBF16PS on Sapphire Rapids, see _engine.pyx), adds the tile projection, and takes the
 * tile products for batched whole sequences: rounded bf16, and int8 where AMX-INT8 is
 * reported (both fall back to the vector products for a few rows). */
static li_kernels avx2vnni_table, avx512vnni_table, avx512bf16_table, amx_table;
static int derived_tables_built = 0;

static void build_derived_tables(void) {
    if (derived_tables_built) return;
    avx2vnni_table = li_kernels_avx2;
    avx2vnni_table.name = "avx2vnni";
    avx2vnni_table.matvec_i8 = li_matvec_i8_avx2vnni;
    avx512vnni_table = li_kernels_avx512;
    avx512vnni_table.name = "avx512vnni";
    avx512vnni_table.matvec_i8 = li_matvec_i8_avx512vnni;
    avx512bf16_table = avx512vnni_table;
    avx512bf16_table.name = "avx512bf16";
    avx512bf16_table.matvec_bf16 = li_matvec_bf16_avx512bf16;
    avx512bf16_table.prepare_bf16 = li_prepare_bf16_avx512bf16;
    avx512bf16_table.matvec_bf16_rounded = li_matvec_bf16_rounded_avx512bf16;
    avx512bf16_table.prepare_bf16_rounded = li_prepare_bf16_rounded_avx512bf16;
    amx_table = avx512vnni_table;
    amx_table.name = "amx";
    amx_table.project_bf16 = li_project_bf16_amx;
    amx_table.matvec_bf16_rounded = li_matvec_bf16_rounded_amx;
    amx_table.prepare_bf16_rounded = li_prepare_bf16_rounded_avx512bf16;
    if (cpu_has_amx_int8()) amx_table.matvec_i8 = li_matvec_i8_amx;
    derived_tables_built = 1;
}

unsigned li_usable_isas(void) {
    build_derived_tables();
    return detect_x86();
}

int li_cpu_vendor(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return LI_VENDOR_OTHER;
    /* The vendor string is ebx, edx, ecx: "GenuineIntel", "AuthenticAMD". */
    if (ebx == 0x756e6547u && edx == 0x49656e69u && ecx == 0x6c65746eu) return LI_VENDOR_INTEL;
    if (ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u) return LI_VENDOR_AMD;
    return LI_VENDOR_OTHER;
}

const li_kernels *li_kernels_for(int isa) {
    build_derived_tables();
    switch (isa) {
    case LI_ISA_SCALAR: return &li_kernels_scalar;
    case LI_ISA_AVX2: return &li_kernels_avx2;
    case LI_ISA_AVX2VNNI: return &avx2vnni_table;
    case LI_ISA_AVX512: return &li_kernels_avx512;
    case LI_ISA_AVX512VNNI: return &avx512vnni_table;
    case LI_ISA_AVX512BF16: return &avx512bf16_table;
    case LI_ISA_AMX: return &amx_table;
    default: return 0;
    }
}

#else /* not x86 (arm64 builds the scalar kernels only) */

unsigned li_usable_isas(void) { return 1u << LI_ISA_SCALAR; }

int li_cpu_vendor(void) { return LI_VENDOR_OTHER; }

const li_kernels *li_kernels_for(int isa) {
    return isa == LI_ISA_SCALAR ? &li_kernels_scalar : 0;
}

#endif
