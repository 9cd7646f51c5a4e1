// Budgeted memory: aligned buffers and the tier that hands them out and counts
// them against a hard limit. Not a general allocator: the planner decides what
// lives when; this enforces the budget, measures, and reuses freed buffers of
// the same size so a prefetch does not pay page faults every time.
import CPlatform
import Foundation
import Tensors

/// Bytes aligned to 4096: enough for every SIMD width and for direct I/O, whose
/// buffers, offsets and lengths must all be multiples of the logical block size.
///
/// The capacity is rounded up to whole pages and the padding is zeroed, so a
/// direct read or write of the padded length never touches memory it does not own.
///
/// The pages are mapped for the buffer alone and unmapped when it goes (or kept by
/// its tier's cache): freed memory leaves the process at once. Memory from malloc
/// would not: a buffer carved from glibc's heap (which serves even large requests
/// from free heap chunks) stays resident after `free`, outside every budget.
public final class AlignedBuffer: @unchecked Sendable {
    public static let alignment = 4096

    /// Bytes asked for.
    public let byteCount: Int
    /// Bytes owned: `byteCount` rounded up to `alignment` (at least one page).
    public let capacity: Int
    public let baseAddress: UnsafeMutableRawPointer

    private let cache: BufferCache?
    private let arena: Arena?
    private let lock = NSLock()
    /// Transfers in flight on the buffer (`pin`); the memory is given back only once none is.
    private var pins = 0
    private var releaseAsked = false
    private var released = false

    public convenience init(byteCount: Int) throws {
        try self.init(byteCount: byteCount, cache: nil)
    }

    static func capacity(for byteCount: Int) -> Int { max(accountedBytes(byteCount), alignment) }

    /// A buffer over `reused` memory (taken from `cache` or `arena`, of the right capacity)
    /// or fresh memory; it returns to `arena` (when it came from there) or `cache` when the buffer goes.
    init(byteCount: Int, cache: BufferCache?, reused: UnsafeMutableRawPointer? = nil, hugePages: Bool = true,
         arena: Arena? = nil) throws {
        guard byteCount >= 0 else { throw OffloadError("[memory] negative buffer size \(byteCount)") }
        let capacity = AlignedBuffer.capacity(for: byteCount)
        let p = try reused ?? AlignedBuffer.mapPages(capacity, hugePages: hugePages)
        if capacity > byteCount { memset(p + byteCount, 0, capacity - byteCount) }
        self.byteCount = byteCount
        self.capacity = capacity
        self.baseAddress = p
        self.cache = cache
        self.arena = arena.flatMap { $0.owns(p) ? $0 : nil }
    }

    deinit {
        if !released { giveBack() }
    }

    /// Fresh zeroed pages of `capacity` bytes. With `hugePages`, large buffers start on a 2 MiB
    /// boundary and ask for transparent huge pages: fewer page faults when fresh, fewer TLB misses
    /// in the kernels, cheaper pinning for direct I/O; but a partly touched huge page is resident whole.
    ///
    /// Direct I/O needs them most. The block layer makes one segment of each physically contiguous
    /// run of a buffer's pages, and a request of more segments than the disk takes (254 on this
    /// virtio disk) is split. A 4 MiB read into 4 KiB pages reached the disk as 6–8 requests of
    /// ~600 KiB and ran at 1.1–1.4 GB/s; into huge pages, as one request at 3.4–4.0 GB/s
    /// (docs/MEMORY.md).
    static func mapPages(_ capacity: Int, hugePages: Bool) throws -> UnsafeMutableRawPointer {
        let huge = hugePages && capacity >= 2 << 20, hugeSize = 2 << 20
        let length = huge ? capacity + hugeSize : capacity
        guard let m = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            throw OffloadError("[memory] cannot allocate \(formatBytes(capacity)): \(String(cString: strerror(errno)))")
        }
        guard huge else { return m }
        // Keep the 2 MiB-aligned `capacity` bytes inside the mapping; unmap the rest.
        let start = (Int(bitPattern: m) + hugeSize - 1) / hugeSize * hugeSize - Int(bitPattern: m)
        if start > 0 { munmap(m, start) }
        if length - start - capacity > 0 { munmap(m + start + capacity, length - start - capacity) }
        _ = madvise(m + start, capacity, 14 /* MADV_HUGEPAGE */)
        return m + start
    }

    static func unmapPages(_ p: UnsafeMutableRawPointer, capacity: Int) { munmap(p, capacity) }

    /// Gives the memory back now (to the cache, or to the system), or, while transfers are in flight
    /// on the buffer, when the last one ends. Called when a tier's buffer is freed: nothing may
    /// read or write the buffer after this but those transfers. Idempotent.
    func release() {
        lock.lock()
        let now = !releaseAsked && pins == 0 && !released
        releaseAsked = true
        if now { released = true }
        lock.unlock()
        if now { giveBack() }
    }

    /// Marks a transfer in flight on the buffer: a `release` meanwhile waits for `unpin`.
    public func pin() {
        lock.lock(); pins += 1; lock.unlock()
    }

    /// Ends a transfer begun with `pin`.
    public func unpin() {
        lock.lock()
        pins -= 1
        let now = pins == 0 && releaseAsked && !released
        if now { released = true }
        lock.unlock()
        if now { giveBack() }
    }

    private func giveBack() {
        if let arena { arena.give(baseAddress, capacity: capacity) }
        else if cache?.give(baseAddress, capacity: capacity) != true { AlignedBuffer.unmapPages(baseAddress, capacity: capacity) }
    }

    /// The `byteCount` bytes the caller asked for.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: baseAddress, count: byteCount) }

    /// The first `count` elements of type `T`.
    public func elements<T>(of type: T.Type) -> UnsafeMutableBufferPointer<T> {
        UnsafeMutableBufferPointer(start: baseAddress.assumingMemoryBound(to: T.self), count: byteCount / MemoryLayout<T>.stride)
    }
}

/// Freed buffers kept for reuse, by exact capacity. Their memory is real, so
/// the tier trims the cache whenever live bytes plus cached bytes would pass
/// its budget.
final class BufferCache: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var held = 0
    let maximum: Int
    /// Bytes the budget leaves beside what is held now: freed buffers are cached only within it, so
    /// held plus cached memory never passes the budget (a buffer freed while a transfer is in flight
    /// on it reaches the cache when the transfer ends, after later allocations).
    let room: @Sendable () -> Int

    init(maximum: Int, room: @escaping @Sendable () -> Int = { .max }) { self.maximum = maximum; self.room = room }

    var bytes: Int { lock.lock(); defer { lock.unlock() }; return held }

    func take(capacity: Int) -> UnsafeMutableRawPointer? {
        lock.lock(); defer { lock.unlock() }
        guard let p = free[capacity]?.popLast() else { return nil }
        held -= capacity
        return p
    }

    /// Keeps `p` for reuse; false when the cache is full (the caller frees it).
    func give(_ p: UnsafeMutableRawPointer, capacity: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard held + capacity <= maximum, held + capacity <= room() else { return false }
        free[capacity, default: []].append(p)
        held += capacity
        return true
    }

    /// Frees cached buffers, largest first, until at most `bytes` are cached.
    func trim(to bytes: Int) {
        lock.lock(); defer { lock.unlock() }
        for capacity in free.keys.sorted(by: >) where held > bytes {
            while held > bytes, let p = free[capacity]?.popLast() {
                AlignedBuffer.unmapPages(p, capacity: capacity)
                held -= capacity
            }
        }
        free = free.filter { !$0.value.isEmpty }
    }

    deinit { trim(to: 0) }
}

/// The bookkeeping every tier shares: what is held, by whom, the peak, and the
/// hard limit. Thread-safe.
final class Ledger: @unchecked Sendable {
    let tier: Tier
    let limit: Int
    /// Where the bytes go, for the budget error ("spill folder /x/offload-spill-12-1"); nil: the tier's name.
    let place: String?
    private let lock = NSLock()
    private var _trace: TraceRecorder?
    var trace: TraceRecorder? {
        get { lock.lock(); defer { lock.unlock() }; return _trace }
        set { lock.lock(); _trace = newValue; lock.unlock() }
    }
    private var held: [Int: (name: String, bytes: Int)] = [:]
    private var nextID = 1
    private var current = 0
    private var peak = 0

    init(tier: Tier, limit: Int, trace: TraceRecorder?, place: String? = nil) {
        self.tier = tier; self.limit = limit; self._trace = trace; self.place = place
    }

    /// Counts `bytes` (already aligned) for `name`, or throws the budget error
    /// without counting anything. Returns the ticket `release` takes.
    func reserve(_ name: String, bytes: Int) throws -> Int {
        lock.lock()
        guard bytes <= limit - current else {
            let message = budgetMessage(name, bytes)
            lock.unlock()
            throw OffloadError(message)
        }
        let id = nextID
        nextID += 1
        held[id] = (name, bytes)
        current += bytes
        peak = max(peak, current)
        let now = current
        let trace = _trace
        lock.unlock()
        if let trace {
            let t = trace.now()
            trace.record(TraceEvent(phase: .instant, name: "alloc \(name)", stream: "memory", start: t, args: ["bytes": Double(bytes)]))
            trace.record(.counter("\(tier.rawValue) bytes", at: t, value: Double(now)))
        }
        return id
    }

    func release(_ id: Int) {
        lock.lock()
        guard let entry = held.removeValue(forKey: id) else { lock.unlock(); return }
        current -= entry.bytes
        let now = current
        let trace = _trace
        lock.unlock()
        if let trace {
            let t = trace.now()
            trace.record(TraceEvent(phase: .instant, name: "free \(entry.name)", stream: "memory", start: t, args: ["bytes": Double(entry.bytes)]))
            trace.record(.counter("\(tier.rawValue) bytes", at: t, value: Double(now)))
        }
    }

    var stats: TierStats {
        lock.lock(); defer { lock.unlock() }
        return TierStats(tier: tier, current: current, peak: peak, limit: limit, allocations: held.count)
    }

    func resetPeak() {
        lock.lock(); peak = current; lock.unlock()
    }

    /// Called with the lock held.
    private func budgetMessage(_ name: String, _ bytes: Int) -> String {
        let largest = held.values.sorted { $0.bytes > $1.bytes }.prefix(3)
            .map { "\($0.name) \(formatBytes($0.bytes))" }.joined(separator: ", ")
        let holders = held.isEmpty ? "" : " (largest: \(largest))"
        let operation = tier == .disk ? "[disk]" : "[memory]"
        if let place {
            return "\(operation) cannot place \(name) (\(formatBytes(bytes)), \(bytes) bytes) in \(place): it is full: "
                + "its limit is \(formatBytes(limit)) (\(limit) bytes) and \(formatBytes(current)) is already held by "
                + "\(held.count) tensors\(holders)"
        }
        return "\(operation) cannot place \(name) (\(formatBytes(bytes)), \(bytes) bytes) in \(tier.rawValue): "
            + "budget \(formatBytes(limit)) (\(limit) bytes), \(formatBytes(current)) already held by \(held.count) tensors\(holders)"
    }
}

/// A memory tier with a hard budget: `compute` (and `host`, which is the same
/// memory on a CPU-only machine).
///
/// Every allocation is counted at its aligned size (`accountedBytes`); one that
/// would take the tier past its limit throws an error naming the tensor, its
/// size, the budget and what is held, and allocates nothing.
public final class MemoryTier: @unchecked Sendable {
    /// Makes large allocations outside the tiers (the trainer's scratch, Swift arrays) leave the
    /// process's resident memory when freed: glibc otherwise raises its mapping threshold after the
    /// first large free and serves later ones from its heap, which keeps freed memory resident.
    /// (Tier buffers map their own pages: `AlignedBuffer`.)
    public static func mapLargeAllocations(from bytes: Int = 1 << 20) { cs_map_large_allocations(Int32(bytes)) }

    /// Gives the free memory inside malloc's heaps back to the system: what setup freed (parsed model
    /// metadata, tokenizer work) would otherwise stay resident beside a budgeted run.
    public static func releaseFreeHeap() { cs_release_free_heap() }

    let ledger: Ledger
    let cache: BufferCache
    let arena: Arena?

    /// Whether large buffers ask for transparent huge pages (see `AlignedBuffer`).
    let hugePages: Bool

    /// - Parameters:
    ///   - reuse: at most this many bytes of freed buffers are kept for reuse by allocations of
    ///     the same size (never more than the budget leaves).
    ///   - hugePages: large buffers on transparent huge pages: faster for buffers that are used
    ///     whole (a training step's units and activations), and direct I/O reaches the disk in
    ///     whole requests; up to 2 MiB more resident per buffer that is only partly touched.
    ///   - arena: buffers come from one reservation of `limit` bytes (see `Arena`), whose pages are
    ///     touched once and then reused: for a tier that allocates the same sizes over and over, with
    ///     all of its budget in use. An allocation the arena cannot place (a freed buffer is still pinned by
    ///     a transfer in flight) comes from the system instead.
    public init(_ tier: Tier = .compute, limit: Int = .max, trace: TraceRecorder? = nil, reuse: Int = 1 << 30,
                hugePages: Bool = true, arena: Bool = false) {
        self.hugePages = hugePages
        precondition(tier != .disk, "the disk tier is a DiskStore")
        ledger = Ledger(tier: tier, limit: limit, trace: trace)
        let ledger = self.ledger
        cache = BufferCache(maximum: max(0, min(reuse, limit))) { ledger.limit - ledger.stats.current }
        self.arena = arena && limit < Int.max / 2 ? Arena(size: limit, hugePages: hugePages) : nil
    }

    /// Allocations the arena could not place (made by the system instead).
    public var arenaMisses: Int { missLock.lock(); defer { missLock.unlock() }; return misses }
    private var misses = 0
    /// Allocations the arena placed by moving free pieces side by side.
    public var arenaGathers: Int { arena?.gathers ?? 0 }
    private let missLock = NSLock()

    /// Bytes of freed buffers kept for reuse (not counted as held).
    public var cachedBytes: Int { cache.bytes }

    /// Frees the buffers kept for reuse.
    public func trimCache() { cache.trim(to: 0) }

    public var tier: Tier { ledger.tier }
    public var limit: Int { ledger.limit }

    /// A snapshot of what the tier holds now.
    public var stats: TierStats { ledger.stats }

    /// Starts a new peak measurement from what is held now.
    public func resetPeak() { ledger.resetPeak() }

    /// Allocates `bytes` for tensor `name`, counted against the budget first.
    /// - Warning: the buffer is counted until `free()` (or deinit); keep it alive
    ///   while anything reads it.
    public func allocate(_ name: String, bytes: Int) throws -> TierBuffer {
        guard bytes >= 0 else { throw OffloadError("[memory] \(name): negative size \(bytes)") }
        let ticket = try ledger.reserve(name, bytes: accountedBytes(bytes))
        if let arena {
            if let p = arena.take(capacity: AlignedBuffer.capacity(for: bytes)) {
                let storage = try AlignedBuffer(byteCount: bytes, cache: nil, reused: p, arena: arena)
                return TierBuffer(name: name, storage: storage, ledger: ledger, ticket: ticket)
            }
            missLock.lock(); misses += 1; missLock.unlock()
        }
        // Reuse a freed buffer of the same size; live plus cached memory stays within the budget.
        let reused = cache.take(capacity: AlignedBuffer.capacity(for: bytes))
        if ledger.limit != .max { cache.trim(to: max(0, ledger.limit - ledger.stats.current)) }
        do {
            let storage = try AlignedBuffer(byteCount: bytes, cache: cache, reused: reused, hugePages: hugePages)
            return TierBuffer(name: name, storage: storage, ledger: ledger, ticket: ticket)
        } catch {
            ledger.release(ticket)
            throw error
        }
    }
}

/// A tensor's bytes in a memory tier, counted against that tier until freed.
public final class TierBuffer: @unchecked Sendable {
    public let name: String
    public let byteCount: Int
    private let ledger: Ledger
    private let lock = NSLock()
    private var ticket: Int?
    private var _storage: AlignedBuffer?

    init(name: String, storage: AlignedBuffer, ledger: Ledger, ticket: Int) {
        self.name = name; self.byteCount = storage.byteCount; self._storage = storage; self.ledger = ledger; self.ticket = ticket
    }

    deinit { free() }

    public var tier: Tier { ledger.tier }
    /// The memory.
    /// - Precondition: not freed.
    public var storage: AlignedBuffer {
        lock.lock(); defer { lock.unlock() }
        guard let s = _storage else { preconditionFailure("[memory] \(name) used after free()") }
        return s
    }
    public var baseAddress: UnsafeMutableRawPointer { storage.baseAddress }
    public var bytes: UnsafeMutableRawBufferPointer { storage.bytes }

    /// Returns the bytes to the tier's budget and the memory to the tier (its arena, cache or the
    /// system) at once, so that what the ledger counts is what the process holds. Idempotent.
    /// - Warning: nothing may use the buffer after this (`storage` stops), except a transfer in flight
    ///   on it (the disk store pins the storage until the transfer ends). A Swift reference kept to the
    ///   storage does not keep the memory.
    public func free() {
        lock.lock()
        let t = ticket
        ticket = nil
        let s = _storage
        _storage = nil
        lock.unlock()
        if let t { ledger.release(t) }
        s?.release()
    }

    /// Whether the buffer still counts against its tier.
    public var isLive: Bool {
        lock.lock(); defer { lock.unlock() }
        return ticket != nil
    }
}

/// The tiers of one run. On a CPU-only machine `host` is the compute tier
/// itself; an accelerator backend gives it its own budget.
public struct Tiers: Sendable {
    public let compute: MemoryTier
    public let host: MemoryTier
    public let disk: DiskStore?

    public init(compute: MemoryTier, host: MemoryTier? = nil, disk: DiskStore? = nil) {
        self.compute = compute; self.host = host ?? compute; self.disk = disk
    }

    /// One snapshot per distinct tier.
    public var stats: [TierStats] {
        var s = [compute.stats]
        if host !== compute { s.append(host.stats) }
        if let disk { s.append(disk.stats) }
        return s
    }
}
