// Open MPI, loaded at run time (dlopen of libmpi.so.40) so that Offload builds and runs without it:
// only a process started by `mpirun` (or asked for ranks) loads it. Handles are Open MPI's exported
// objects (ompi_mpi_comm_world, ompi_mpi_byte, ompi_mpi_float), as its mpi.h macros name them.
// Every call returns MPI's error code (0: success); errors on MPI_COMM_WORLD abort the whole job
// (Open MPI's default handler), so a failed collective never hangs the other ranks.
#pragma once
#include <stdint.h>

/// Loads the library and its symbols; on failure returns -1 with a message in `error`.
int cm_load(char *error, int error_length);
int cm_init(void);
int cm_finalize(void);
int cm_rank(void);
int cm_size(void);
/// Every rank's `count` bytes, in rank order, into `receive` (size × count bytes).
int cm_allgather_bytes(const void *send, int count, void *receive);
/// All-to-all of floats with per-rank counts and displacements (in floats).
int cm_alltoallv_floats(const float *send, const int *send_counts, const int *send_displacements,
                        float *receive, const int *receive_counts, const int *receive_displacements);
/// In place: rank i's `counts[i]` floats at `displacements[i]` of `buffer` reach every rank's buffer.
int cm_allgatherv_floats_in_place(float *buffer, const int *counts, const int *displacements);
/// Rank i's `count` bytes at `send` into `receive` + `displacements[i]` on `root` (receive ignored elsewhere).
int cm_gatherv_bytes(const void *send, int count, void *receive, const int *counts, const int *displacements, int root);
int cm_barrier(void);
/// Ends every rank of the job with `code` (MPI_Abort on MPI_COMM_WORLD).
void cm_abort(int code);
