/*
 * Run-time CPU dispatch: which vector instruction set the kernels may use.
 *
 * One binary serves every x86-64 machine: kernels are compiled for several
 * targets side by side (function attributes, never -march) and each family
 * picks its variant from mk_cpu_level() once.  A level counts only when the
 * CPU has the instructions AND the OS saves the wider registers on a context
 * switch (XCR0), else the first ymm/zmm instruction would fault or corrupt
 * state.  MASKD_CPU=portable|avx2|avx512 lowers the level so that tests and
 * users can run the fallback paths on a machine that has more; it never
 * raises it past what was detected.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "mk.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    /* xgetbv by opcode bytes: the intrinsic needs the xsave target. */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static mk_isa detect(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return MK_ISA_PORTABLE;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
    if (!osxsave || !avx || !fma) return MK_ISA_PORTABLE;
    const uint64_t xcr0 = read_xcr0();
    const uint64_t ymm_state = 0x6;   /* SSE + AVX halves */
    const uint64_t zmm_state = 0xe0;  /* opmask, zmm0-15 upper, zmm16-31 */
    if ((xcr0 & ymm_state) != ymm_state) return MK_ISA_PORTABLE;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return MK_ISA_PORTABLE;
    if (!(b & (1u << 5))) return MK_ISA_PORTABLE; /* AVX2 */
    const unsigned avx512_fdqbwvl = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
    if ((b & avx512_fdqbwvl) == avx512_fdqbwvl && (xcr0 & zmm_state) == zmm_state)
        return MK_ISA_AVX512;
    return MK_ISA_AVX2;
}
#else
static mk_isa detect(void) { return MK_ISA_PORTABLE; }
#endif

static mk_isa level = MK_ISA_PORTABLE;
static pthread_once_t level_once = PTHREAD_ONCE_INIT;

static void compute_level(void)
{
    mk_isa have = detect();
    const char *want = getenv("MASKD_CPU");
    mk_isa cap = have;
    if (want && !strcmp(want, "portable")) cap = MK_ISA_PORTABLE;
    else if (want && !strcmp(want, "avx2")) cap = MK_ISA_AVX2;
    else if (want && !strcmp(want, "avx512")) cap = MK_ISA_AVX512;
    level = cap < have ? cap : have;
}

mk_isa mk_cpu_level(void)
{
    pthread_once(&level_once, compute_level);
    return level;
}

const char *mk_isa_name(mk_isa isa)
{
    switch (isa) {
    case MK_ISA_AVX2: return "avx2";
    case MK_ISA_AVX512: return "avx512";
    default: return "portable";
    }
}
