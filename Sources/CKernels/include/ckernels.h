// Hot CPU kernels Swift cannot express well: SIMD dot products over quantized
// blocks (AVX2/AVX-512 with a portable fallback, chosen at run time).
#pragma once
#include <stddef.h>
#include <stdint.h>
