// System calls and flags Swift cannot see directly: O_DIRECT, posix_fallocate,
// flock, full-length pread/pwrite, and an async-signal-safe registry of spill
// files removed at exit and on SIGINT/SIGTERM/SIGHUP.
// Not a general POSIX wrapper: only what the Memory module needs.
#pragma once
#include <stddef.h>
#include <stdint.h>

/// open(2) for a spill file. With `direct` nonzero the file is opened with
/// O_DIRECT (F_NOCACHE on macOS). Returns the descriptor, or -errno.
int cs_open(const char *path, int flags, int mode, int direct);

/// posix_fallocate: 0, or an error number (ENOSPC, EOPNOTSUPP ...).
int cs_fallocate(int fd, int64_t offset, int64_t length);

/// pwrite until `length` bytes are written, retrying EINTR and partial writes.
/// Returns the bytes written (less than `length` only when the device stops
/// accepting bytes without an error), or -errno when nothing more could be written
/// (`*done` then holds how many bytes were written before the error).
int64_t cs_pwrite_full(int fd, const void *buffer, int64_t length, int64_t offset, int64_t *done);

/// pread until `length` bytes are read, retrying EINTR and partial reads.
/// Returns the bytes read (less than `length` at end of file), or -errno.
int64_t cs_pread_full(int fd, void *buffer, int64_t length, int64_t offset);

/// Reads (`write` 0) or writes `count` pairs of `unit` bytes at `offset`, laid out in the file as
/// a₀ b₀ a₁ b₁ …, from or into two buffers (pair i at a + i·unit and b + i·unit): one preadv or
/// pwritev per 256 pairs, retrying EINTR and partial transfers. Returns the bytes moved (less than
/// 2·unit·count at end of file), or -errno.
int64_t cs_pio_pairs(int fd, void *a, void *b, int64_t unit, int64_t count, int64_t offset, int write);

/// flock(LOCK_EX | LOCK_NB): 0 when this process now holds the lock, -errno otherwise.
int cs_try_lock(int fd);

/// 1 when a process with this id exists (kill(pid, 0) does not say ESRCH), else 0.
int cs_process_alive(int pid);

/// Registers a path removed by cs_cleanup_run (files with unlink, folders with
/// rmdir, in reverse order of registration). Returns the slot, or -1 when the
/// registry is full or the path too long.
int cs_cleanup_register(const char *path, int is_folder);

/// Forgets a slot (the caller removed the path itself).
void cs_cleanup_unregister(int slot);

/// Removes every registered path. Async-signal-safe.
void cs_cleanup_run(void);

/// Installs (once) an atexit hook and SIGINT/SIGTERM/SIGHUP handlers that run
/// cs_cleanup_run, then die of the same signal as they would have without us.
void cs_cleanup_install(void);

/// Nanoseconds of CLOCK_MONOTONIC.
uint64_t cs_monotonic_ns(void);

/// glibc: serve allocations of `bytes` and more with their own mappings, returned to the system on
/// free, instead of letting the threshold rise after the first large free (mallopt M_MMAP_THRESHOLD).
void cs_map_large_allocations(int bytes);

/// Moves the pages of [from, from + length) (private anonymous memory) to `to`, replacing what was
/// mapped there (mremap with MREMAP_FIXED): the physical pages go with them, nothing is copied or
/// zeroed. With `keep_source`, [from, from + length) stays mapped, empty (MREMAP_DONTUNMAP), so no
/// other mapping can land there meanwhile; otherwise it becomes a hole. Returns 0 or an errno.
int cs_move_pages(void *from, size_t length, void *to, int keep_source);
/// glibc: gives the free memory inside malloc's heaps back to the system (malloc_trim(0)): what
/// setup freed (parsed file metadata, tokenizer work) otherwise stays resident. Elsewhere a no-op.
void cs_release_free_heap(void);
