// OpenBLAS's C interface (Debian: libopenblas-dev). openblas_set_num_threads comes with it.
#include <cblas.h>
