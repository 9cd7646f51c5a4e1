// System calls and flags Swift cannot see directly (O_DIRECT, posix_fallocate ...)
// and the spill-file cleanup that must run inside a signal handler.
#define _GNU_SOURCE
#include <malloc.h>
#include "cplatform.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int cs_open(const char *path, int flags, int mode, int direct) {
#ifdef O_DIRECT
    if (direct) flags |= O_DIRECT;
#endif
    int fd;
    do { fd = open(path, flags | O_CLOEXEC, mode); } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -errno;
#if defined(__APPLE__)
    if (direct && fcntl(fd, F_NOCACHE, 1) != 0) { int e = errno; close(fd); return -e; }
#endif
    return fd;
}

int cs_fallocate(int fd, int64_t offset, int64_t length) {
#if defined(__linux__)
    int r;
    do { r = posix_fallocate(fd, (off_t)offset, (off_t)length); } while (r == EINTR);
    return r;
#else
    (void)offset;
    return ftruncate(fd, (off_t)(offset + length)) == 0 ? 0 : errno;
#endif
}

int64_t cs_pwrite_full(int fd, const void *buffer, int64_t length, int64_t offset, int64_t *done) {
    int64_t total = 0;
    *done = 0;
    while (total < length) {
        ssize_t n = pwrite(fd, (const char *)buffer + total, (size_t)(length - total), (off_t)(offset + total));
        if (n < 0) {
            if (errno == EINTR) continue;
            *done = total;
            return -errno;
        }
        if (n == 0) break;
        total += n;
    }
    *done = total;
    return total;
}

int64_t cs_pread_full(int fd, void *buffer, int64_t length, int64_t offset) {
    int64_t total = 0;
    while (total < length) {
        ssize_t n = pread(fd, (char *)buffer + total, (size_t)(length - total), (off_t)(offset + total));
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (n == 0) break;
        total += n;
    }
    return total;
}

int64_t cs_pio_pairs(int fd, void *a, void *b, int64_t unit, int64_t count, int64_t offset, int write) {
    enum { BATCH = 512 };   // iovecs per call, under IOV_MAX (1024)
    struct iovec iov[BATCH];
    const int64_t bytes = 2 * unit * count;
    int64_t total = 0;
    while (total < bytes) {
        int n = 0;
        for (int64_t pos = total; n < BATCH && pos < bytes; n++) {
            int64_t pair = pos / (2 * unit), within = pos % (2 * unit);
            char *base = within < unit ? (char *)a + pair * unit + within : (char *)b + pair * unit + (within - unit);
            int64_t length = within < unit ? unit - within : 2 * unit - within;
            iov[n].iov_base = base;
            iov[n].iov_len = (size_t)length;
            pos += length;
        }
        ssize_t r = write ? pwritev(fd, iov, n, (off_t)(offset + total)) : preadv(fd, iov, n, (off_t)(offset + total));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) break;
        total += r;
    }
    return total;
}

int cs_try_lock(int fd) {
    int r;
    do { r = flock(fd, LOCK_EX | LOCK_NB); } while (r != 0 && errno == EINTR);
    return r == 0 ? 0 : -errno;
}

int cs_process_alive(int pid) {
    if (pid <= 0) return 0;
    return (kill((pid_t)pid, 0) == 0 || errno != ESRCH) ? 1 : 0;
}

// ---- cleanup registry -------------------------------------------------------
// Fixed slots so the signal handler touches no allocator: a slot is free (0),
// being written (1) or ready (2). Only ready slots are removed.

enum { SLOTS = 256, PATH_BYTES = 1024 };
static _Atomic int slot_state[SLOTS];
static _Atomic long slot_order[SLOTS];
static int slot_is_folder[SLOTS];
static char slot_path[SLOTS][PATH_BYTES];
static _Atomic long next_order = 1;

int cs_cleanup_register(const char *path, int is_folder) {
    size_t n = strlen(path);
    if (n + 1 > PATH_BYTES) return -1;
    for (int i = 0; i < SLOTS; i++) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&slot_state[i], &expected, 1)) {
            memcpy(slot_path[i], path, n + 1);
            slot_is_folder[i] = is_folder;
            atomic_store(&slot_order[i], atomic_fetch_add(&next_order, 1));
            atomic_store(&slot_state[i], 2);
            return i;
        }
    }
    return -1;
}

void cs_cleanup_unregister(int slot) {
    if (slot < 0 || slot >= SLOTS) return;
    atomic_store(&slot_state[slot], 0);
}

void cs_cleanup_run(void) {
    // Newest first: files registered after their folder go before it.
    for (;;) {
        int best = -1;
        long best_order = 0;
        for (int i = 0; i < SLOTS; i++) {
            if (atomic_load(&slot_state[i]) != 2) continue;
            long o = atomic_load(&slot_order[i]);
            if (o > best_order) { best_order = o; best = i; }
        }
        if (best < 0) return;
        int expected = 2;
        if (!atomic_compare_exchange_strong(&slot_state[best], &expected, 1)) continue;
        if (slot_is_folder[best]) rmdir(slot_path[best]); else unlink(slot_path[best]);
        atomic_store(&slot_state[best], 0);
    }
}

static struct sigaction previous[3];
static const int handled[3] = {SIGINT, SIGTERM, SIGHUP};

static void on_signal(int sig) {
    int saved = errno;
    cs_cleanup_run();
    for (int i = 0; i < 3; i++) {
        if (handled[i] != sig) continue;
        if (previous[i].sa_handler != SIG_DFL && previous[i].sa_handler != SIG_IGN &&
            !(previous[i].sa_flags & SA_SIGINFO) && previous[i].sa_handler != on_signal) {
            previous[i].sa_handler(sig);   // someone else's handler: let it decide
            errno = saved;
            return;
        }
        // Die of the same signal, so the parent sees what it would have seen.
        signal(sig, SIG_DFL);
        raise(sig);
    }
    errno = saved;
}

static void on_exit_hook(void) { cs_cleanup_run(); }

void cs_cleanup_install(void) {
    static atomic_int installed = 0;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return;
    atexit(on_exit_hook);
    for (int i = 0; i < 3; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(handled[i], &sa, &previous[i]);
        if (previous[i].sa_handler == SIG_IGN) sigaction(handled[i], &previous[i], NULL);  // nohup: keep ignoring
    }
}

uint64_t cs_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void cs_map_large_allocations(int bytes) { mallopt(M_MMAP_THRESHOLD, bytes); }

int cs_move_pages(void *from, size_t length, void *to, int keep_source) {
#ifndef MREMAP_DONTUNMAP
    if (keep_source) return EINVAL;
#define MREMAP_DONTUNMAP 0
#endif
    int flags = MREMAP_MAYMOVE | MREMAP_FIXED | (keep_source ? MREMAP_DONTUNMAP : 0);
    void *p = mremap(from, length, length, flags, to);
    return p == MAP_FAILED ? errno : 0;
}

void cs_release_free_heap(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
