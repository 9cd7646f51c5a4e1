// Open MPI through dlopen: see cmpi.h.
#define _GNU_SOURCE
#include "cmpi.h"
#include <dlfcn.h>
#include <stdio.h>

typedef void *Handle;
static Handle world, byte_type, float_type;
static int (*p_init)(int *, char ***);
static int (*p_finalize)(void);
static int (*p_comm_rank)(Handle, int *);
static int (*p_comm_size)(Handle, int *);
static int (*p_allgather)(const void *, int, Handle, void *, int, Handle, Handle);
static int (*p_alltoallv)(const void *, const int *, const int *, Handle, void *, const int *, const int *, Handle, Handle);
static int (*p_allgatherv)(const void *, int, Handle, void *, const int *, const int *, Handle, Handle);
static int (*p_gatherv)(const void *, int, Handle, void *, const int *, const int *, Handle, int, Handle);
static int (*p_barrier)(Handle);
static int (*p_abort)(Handle, int);

#define MPI_IN_PLACE_OPEN_MPI ((void *)1)

int cm_load(char *error, int error_length) {
    if (world) return 0;
    // RTLD_GLOBAL: Open MPI's own plugins resolve their symbols against libmpi.
    void *h = dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { snprintf(error, error_length, "%s", dlerror()); return -1; }
    struct { void **slot; const char *name; } symbols[] = {
        {(void **)&p_init, "MPI_Init"}, {(void **)&p_finalize, "MPI_Finalize"},
        {(void **)&p_comm_rank, "MPI_Comm_rank"}, {(void **)&p_comm_size, "MPI_Comm_size"},
        {(void **)&p_allgather, "MPI_Allgather"},
        {(void **)&p_alltoallv, "MPI_Alltoallv"}, {(void **)&p_allgatherv, "MPI_Allgatherv"},
        {(void **)&p_gatherv, "MPI_Gatherv"}, {(void **)&p_barrier, "MPI_Barrier"}, {(void **)&p_abort, "MPI_Abort"},
        {&world, "ompi_mpi_comm_world"}, {&byte_type, "ompi_mpi_byte"}, {&float_type, "ompi_mpi_float"},
    };
    for (unsigned i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(h, symbols[i].name);
        if (!*symbols[i].slot) {
            snprintf(error, error_length, "libmpi.so.40 has no symbol %s (not Open MPI 4 or later?)", symbols[i].name);
            world = 0;
            return -1;
        }
    }
    return 0;
}

int cm_init(void) { return p_init(0, 0); }
int cm_finalize(void) { return p_finalize(); }
int cm_rank(void) { int r = -1; p_comm_rank(world, &r); return r; }
int cm_size(void) { int n = 0; p_comm_size(world, &n); return n; }

int cm_allgather_bytes(const void *send, int count, void *receive) {
    return p_allgather(send, count, byte_type, receive, count, byte_type, world);
}

int cm_alltoallv_floats(const float *send, const int *send_counts, const int *send_displacements,
                        float *receive, const int *receive_counts, const int *receive_displacements) {
    return p_alltoallv(send, send_counts, send_displacements, float_type,
                       receive, receive_counts, receive_displacements, float_type, world);
}

int cm_allgatherv_floats_in_place(float *buffer, const int *counts, const int *displacements) {
    return p_allgatherv(MPI_IN_PLACE_OPEN_MPI, 0, float_type, buffer, counts, displacements, float_type, world);
}

int cm_gatherv_bytes(const void *send, int count, void *receive, const int *counts, const int *displacements, int root) {
    return p_gatherv(send, count, byte_type, receive, counts, displacements, byte_type, root, world);
}

int cm_barrier(void) { return p_barrier(world); }
void cm_abort(int code) { if (p_abort) p_abort(world, code); }
