// Budgeted memory: aligned buffers and the tier that hands them out and counts
// them against a hard limit. Not a general allocator (no pooling or reuse):
// the planner decides what lives when, this only enforces and measures.
import Foundation
import Tensors

/// Bytes aligned to 4096: enough for every SIMD width and for direct I/O, whose
/// buffers, offsets and lengths must all be multiples of the logical block size.
///
/// The capacity is rounded up to whole pages and the padding is zeroed, so a
/// direct read or write of the padded length never touches memory it does not own.
public final class AlignedBuffer: @unchecked Sendable {
    public static let alignment = 4096

    /// Bytes asked for.
    public let byteCount: Int
    /// Bytes owned: `byteCount` rounded up to `alignment` (at least one page).
    public let capacity: Int
    public let baseAddress: UnsafeMutableRawPointer

    public init(byteCount: Int) throws {
        guard byteCount >= 0 else { throw OffloadError("[memory] negative buffer size \(byteCount)") }
        let capacity = max(accountedBytes(byteCount), AlignedBuffer.alignment)
        var pointer: UnsafeMutableRawPointer?
        let r = posix_memalign(&pointer, AlignedBuffer.alignment, capacity)
        guard r == 0, let p = pointer else {
            throw OffloadError("[memory] cannot allocate \(formatBytes(capacity)) aligned to \(AlignedBuffer.alignment): \(String(cString: strerror(r)))")
        }
        if capacity > byteCount { memset(p + byteCount, 0, capacity - byteCount) }
        self.byteCount = byteCount
        self.capacity = capacity
        self.baseAddress = p
    }

    deinit { free(baseAddress) }

    /// The `byteCount` bytes the caller asked for.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: baseAddress, count: byteCount) }

    /// The first `count` elements of type `T`.
    public func elements<T>(of type: T.Type) -> UnsafeMutableBufferPointer<T> {
        UnsafeMutableBufferPointer(start: baseAddress.assumingMemoryBound(to: T.self), count: byteCount / MemoryLayout<T>.stride)
    }
}

/// The bookkeeping every tier shares: what is held, by whom, the peak, and the
/// hard limit. Thread-safe.
final class Ledger: @unchecked Sendable {
    let tier: Tier
    let limit: Int
    let trace: TraceRecorder?
    private let lock = NSLock()
    private var held: [Int: (name: String, bytes: Int)] = [:]
    private var nextID = 1
    private var current = 0
    private var peak = 0

    init(tier: Tier, limit: Int, trace: TraceRecorder?) {
        self.tier = tier; self.limit = limit; self.trace = trace
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
    let ledger: Ledger

    public init(_ tier: Tier = .compute, limit: Int = .max, trace: TraceRecorder? = nil) {
        precondition(tier != .disk, "the disk tier is a DiskStore")
        ledger = Ledger(tier: tier, limit: limit, trace: trace)
    }

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
        do {
            return TierBuffer(name: name, storage: try AlignedBuffer(byteCount: bytes), ledger: ledger, ticket: ticket)
        } catch {
            ledger.release(ticket)
            throw error
        }
    }
}

/// A tensor's bytes in a memory tier, counted against that tier until freed.
public final class TierBuffer: @unchecked Sendable {
    public let name: String
    public let storage: AlignedBuffer
    private let ledger: Ledger
    private let lock = NSLock()
    private var ticket: Int?

    init(name: String, storage: AlignedBuffer, ledger: Ledger, ticket: Int) {
        self.name = name; self.storage = storage; self.ledger = ledger; self.ticket = ticket
    }

    deinit { free() }

    public var tier: Tier { ledger.tier }
    public var byteCount: Int { storage.byteCount }
    public var baseAddress: UnsafeMutableRawPointer { storage.baseAddress }
    public var bytes: UnsafeMutableRawBufferPointer { storage.bytes }

    /// Returns the bytes to the tier's budget. Idempotent. The memory itself is
    /// released when the last reference to `storage` goes.
    public func free() {
        lock.lock()
        let t = ticket
        ticket = nil
        lock.unlock()
        if let t { ledger.release(t) }
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
