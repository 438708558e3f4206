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
    const int avx2 = (ebx >> 5) & 1;
    const int avx512 = ((ebx >> 16) & 1) && ((ebx >> 17) & 1) /* F, DQ */
                       && ((ebx >> 30) & 1) && ((ebx >> 31) & 1); /* BW, VL */
    if (ymm_saved && avx2 && fma) isas |= 1u << LI_ISA_AVX2;
    if (zmm_saved && avx512 && fma) isas |= 1u << LI_ISA_AVX512;
    return isas;
}

unsigned li_usable_isas(void) { return detect_x86(); }

const li_kernels *li_kernels_for(int isa) {
    switch (isa) {
    case LI_ISA_SCALAR: return &li_kernels_scalar;
    case LI_ISA_AVX2: return &li_kernels_avx2;
    case LI_ISA_AVX512: return &li_kernels_avx512;
    default: return 0;
    }
}

#else /* not x86 (arm64 builds the scalar kernels only) */

unsigned li_usable_isas(void) { return 1u << LI_ISA_SCALAR; }

const li_kernels *li_kernels_for(int isa) {
    return isa == LI_ISA_SCALAR ? &li_kernels_scalar : 0;
}

#endif
