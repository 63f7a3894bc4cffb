/* Tensor type traits and half-precision conversions (see kernels/kern.h). */
#include "kernels/kern.h"

#include <string.h>

typedef struct {
    const char *name;
    size_t block_elems;
    size_t block_bytes;
} type_traits;

static const type_traits traits[KERN_TYPE_COUNT] = {
    [KERN_TYPE_F32] = {"F32", 1, 4},
    [KERN_TYPE_F16] = {"F16", 1, 2},
    [KERN_TYPE_Q4_0] = {"Q4_0", KERN_QK, 2 + KERN_QK / 2},
    [KERN_TYPE_Q4_1] = {"Q4_1", KERN_QK, 4 + KERN_QK / 2},
    [KERN_TYPE_Q8_0] = {"Q8_0", KERN_QK, 2 + KERN_QK},
    [KERN_TYPE_Q4_K] = {"Q4_K", KERN_QK_K, 4 + 12 + KERN_QK_K / 2},
    [KERN_TYPE_Q5_K] = {"Q5_K", KERN_QK_K, 4 + 12 + KERN_QK_K / 8 + KERN_QK_K / 2},
    [KERN_TYPE_Q6_K] = {"Q6_K", KERN_QK_K, KERN_QK_K / 2 + KERN_QK_K / 4 + KERN_QK_K / 16 + 2},
    [KERN_TYPE_BF16] = {"BF16", 1, 2},
};

bool kern_type_supported(uint32_t type) {
    return type < KERN_TYPE_COUNT && traits[type].name != NULL;
}

const char *kern_type_name(uint32_t type) {
    return kern_type_supported(type) ? traits[type].name : "unknown";
}

size_t kern_type_block_elems(uint32_t type) {
    return kern_type_supported(type) ? traits[type].block_elems : 0;
}

size_t kern_type_block_bytes(uint32_t type) {
    return kern_type_supported(type) ? traits[type].block_bytes : 0;
}

size_t kern_row_bytes(uint32_t type, size_t n) {
    if (!kern_type_supported(type)) return 0;
    size_t be = traits[type].block_elems;
    if (n % be) return 0;
    return n / be * traits[type].block_bytes;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kern_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t kern_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (abs < 0x38800000u) {
        /* result is subnormal or zero: round abs * 2^24 to the nearest integer, ties to even */
        float v = bits_f32(abs) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t exp = ((abs >> 23) - 112) << 10;
    uint32_t man = (abs >> 13) & 0x3ff;
    uint32_t rest = abs & 0x1fff;
    uint32_t h = exp | man;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* carries into exp correctly */
    return (uint16_t)(sign | h);
}

float kern_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t kern_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
