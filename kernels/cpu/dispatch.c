/* Start-up choice of the CPU kernel level. kern_init picks the best level this CPU supports
 * (AVX-512 with VNNI, then AVX2+FMA+F16C, else the portable scalar code), unless TOKD_ISA
 * (scalar|avx2|avx512) asks for a lower one, and logs the choice once. The SIMD files are
 * compiled with per-file target pragmas, so nothing here or elsewhere needs -march. */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "common/tk_log.h"
#include "kernels/cpu/cpu_internal.h"

static const char *const isa_names[KERN_ISA_COUNT] = {"scalar", "avx2", "avx512"};
static int cur_isa = KERN_ISA_SCALAR;
const kern__ops *kern__cur = &kern__ops_scalar;

#if defined(__x86_64__) || defined(__i386__)
/* CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports has no "f16c"); the OS side of the AVX
 * state is covered by the avx2 check. */
static bool has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

int kern__isa_best(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    return avx512 ? KERN_ISA_AVX512 : avx2 ? KERN_ISA_AVX2 : KERN_ISA_SCALAR;
#else
    return KERN_ISA_SCALAR;
#endif
}

int kern__set_isa(int isa) {
    if (isa < 0 || isa > kern__isa_best()) return -1;
#if defined(__x86_64__) || defined(__i386__)
    kern__cur = isa == KERN_ISA_AVX512 ? kern__ops_avx512() : isa == KERN_ISA_AVX2 ? kern__ops_avx2() : &kern__ops_scalar;
#else
    kern__cur = &kern__ops_scalar;
#endif
    cur_isa = isa;
    return 0;
}

int kern__isa(void) { return cur_isa; }

void kern__dispatch_init(void) {
    int best = kern__isa_best(), want = best;
    const char *env = getenv("TOKD_ISA");
    if (env && *env) {
        int asked = -1;
        for (int i = 0; i < KERN_ISA_COUNT; i++)
            if (strcmp(env, isa_names[i]) == 0) asked = i;
        if (asked < 0 || asked > best)
            TK_WARN("kernels: TOKD_ISA=%s is not available here, using %s", env, isa_names[best]);
        else
            want = asked;
    }
    kern__set_isa(want);
    TK_INFO("kernels: %s%s", isa_names[want], want == KERN_ISA_AVX512 ? "-vnni" : "");
}
