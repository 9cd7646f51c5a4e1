// Tiers: the places bytes can live (compute memory, host memory, disk) and the
// statistics each reports. Not the allocators themselves (MemoryTier.swift,
// DiskStore.swift).
import Tensors

/// A place bytes can live.
public enum Tier: String, Sendable, CaseIterable, Codable {
    /// Where kernels read and write: host RAM on a CPU-only machine.
    case compute
    /// Host memory when compute is an accelerator (pinned); the same memory as
    /// `compute` on a CPU-only machine.
    case host
    /// Spill files on a local SSD, read and written with direct I/O.
    case disk
}

/// Bytes held by one tier at the moment of the snapshot.
///
/// A value, so callers can keep a snapshot and compare it with a later one.
public struct TierStats: Sendable, Equatable, Codable, CustomStringConvertible {
    public var tier: Tier
    /// Bytes held now (each allocation counted at its aligned size).
    public var current: Int
    /// The most bytes held at any moment since the tier was created or reset.
    public var peak: Int
    /// The budget; `Int.max` when unlimited.
    public var limit: Int
    /// Live allocations (tensors) now.
    public var allocations: Int

    public init(tier: Tier, current: Int, peak: Int, limit: Int, allocations: Int) {
        self.tier = tier; self.current = current; self.peak = peak
        self.limit = limit; self.allocations = allocations
    }

    public var description: String {
        let budget = limit == .max ? "unlimited" : formatBytes(limit)
        return "\(tier.rawValue): \(formatBytes(current)) held (\(allocations) tensors), peak \(formatBytes(peak)), budget \(budget)"
    }
}

/// How bytes are counted against a budget: every allocation occupies whole
/// 4 KiB pages, because buffers are aligned and padded for SIMD and direct I/O.
///
/// The planner's simulator uses the same rule so that its memory numbers are
/// exact, not estimates.
public func accountedBytes(_ bytes: Int) -> Int {
    precondition(bytes >= 0, "negative size")
    let a = AlignedBuffer.alignment
    return (bytes + a - 1) / a * a
}
