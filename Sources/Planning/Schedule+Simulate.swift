// The simulator: interprets a schedule with the cost model. Exact about memory
// (every byte created, held and freed, per tier, at every instant), estimates time.
import Foundation
import Memory
import Tensors

/// An op that found no room under its tier's budget (`error` says how much it needed and what was held).
public struct ScheduleOverflow: Error, CustomStringConvertible {
    public var op: Int
    public var error: OffloadError
    public var description: String { error.description }
}

/// Budgets per tier in bytes; a missing tier is unlimited.
public typealias TierBudgets = [Tier: Int]

/// When one op ran in the simulation.
public struct SimulatedOp: Codable, Sendable, Equatable {
    public var id: Int
    public var start: Double
    public var end: Double
    /// Seconds the op waited for memory after its dependencies were done.
    public var memoryWait: Double
}

/// Bytes in use in one tier from `time` until the next point.
public struct MemoryPoint: Codable, Sendable, Equatable {
    public var time: Double
    public var bytes: Int
}

/// What a simulation predicts.
public struct Simulation: Codable, Sendable {
    public var stepSeconds: Double
    public var ops: [SimulatedOp]
    public var peak: [Tier: Int]
    public var timeline: [Tier: [MemoryPoint]]
    /// Bytes moved, keyed `compute→disk` and so on.
    public var bytesMoved: [String: Int]
    public var computeSeconds: Double
    public var recomputeSeconds: Double
    /// Time the compute stream sat idle inside the step (waiting for transfers or memory).
    public var computeIdleSeconds: Double
    /// Tensors resident at the end that were not at the start, or the reverse.
    public var leaks: [String]

    public var totalBytesMoved: Int { bytesMoved.values.reduce(0, +) }

    /// The most bytes the given tiers hold together at any instant (not the sum of
    /// their peaks): on a CPU-only machine compute + host is the RAM in use.
    public func combinedPeak(_ tiers: [Tier]) -> Int {
        let lines = tiers.map { timeline[$0] ?? [] }
        var best = 0
        for t in Set(lines.flatMap { $0.map(\.time) }).sorted() {
            var sum = 0
            for line in lines {
                // The last point at or before t (points are in time order).
                var lo = 0, hi = line.count
                while lo < hi { let m = (lo + hi) / 2; if line[m].time <= t { lo = m + 1 } else { hi = m } }
                if lo > 0 { sum += line[lo - 1].bytes }
            }
            best = max(best, sum)
        }
        return best
    }
}

extension Schedule {
    /// Runs the schedule on the cost model.
    ///
    /// An op starts when the previous op on its stream and its `deps` have ended and
    /// its allocations fit under every budget for as long as they are held (an op
    /// that would overflow waits for frees already scheduled; if none come, this
    /// throws). A read of a tensor not yet resident where the op needs it throws:
    /// the schedule is missing a dependency.
    public func simulate(budgets: TierBudgets = [:]) throws -> Simulation {
        let sizes = tensorBytes
        var tiers: [Tier: MemoryLine] = [:]
        for t in Tier.allCases { tiers[t] = MemoryLine(budget: budgets[t] ?? Int.max) }
        // resident[tier][name] = time the data is complete there.
        var resident: [Tier: [String: Double]] = [:]
        for t in Tier.allCases { resident[t] = [:] }
        for p in initial {
            guard let b = sizes[p.tensor] else { throw OffloadError("[simulate] initial tensor \(p.tensor) has no size") }
            if resident[p.tier]![p.tensor] != nil { throw OffloadError("[simulate] \(p.tensor) placed twice in \(p.tier)") }
            resident[p.tier]![p.tensor] = 0
            tiers[p.tier]!.base += b
        }
        for t in Tier.allCases where tiers[t]!.base > tiers[t]!.budget {
            throw OffloadError("[simulate] what stays in \(t.rawValue) memory for the whole step takes \(formatBytes(tiers[t]!.base)), more than its budget of \(formatBytes(tiers[t]!.budget))")
        }
        var endOf = [Double](repeating: 0, count: operations.count)
        var indexOf: [Int: Int] = [:]
        var streamEnd: [Stream: Double] = [:]
        var ops: [SimulatedOp] = []
        ops.reserveCapacity(operations.count)
        var moved: [String: Int] = [:]
        var computeBusy = 0.0, recompute = 0.0, lastComputeEnd = 0.0

        func bytes(_ names: [String], _ op: Operation) throws -> Int {
            var total = 0
            for n in names {
                guard let b = sizes[n] else { throw OffloadError("[simulate] op #\(op.id): unknown tensor \(n)") }
                total += b
            }
            return total
        }
        for (index, op) in operations.enumerated() {
            indexOf[op.id] = index
            var ready = streamEnd[op.stream] ?? 0
            for d in op.deps {
                guard let di = indexOf[d] else {
                    throw OffloadError("[simulate] op #\(op.id) depends on #\(d), which does not come before it")
                }
                ready = max(ready, endOf[di])
            }
            let createTier = op.tier
            let createBytes = try bytes(op.creates, op)
            let duration = op.seconds
            var start = ready
            if createBytes > 0 || op.tempBytes > 0 {
                // Temp bytes are compute-tier; creates go to op.tier.
                if createTier == .compute || op.tempBytes == 0 {
                    start = try tiers[createTier]!.earliestFit(from: ready, hold: createBytes,
                        temp: createTier == .compute ? op.tempBytes : 0, duration: duration, op: op)
                } else {
                    let s1 = try tiers[.compute]!.earliestFit(from: ready, hold: 0, temp: op.tempBytes, duration: duration, op: op)
                    start = try tiers[createTier]!.earliestFit(from: s1, hold: createBytes, temp: 0, duration: duration, op: op)
                }
            }
            let end = start + duration
            // Reads must be complete where the op reads them.
            let readTier = (op.kind == .prefetch || op.kind == .offload) ? (op.from ?? .compute) : op.tier
            for n in op.reads {
                guard let at = resident[readTier]![n] else {
                    throw OffloadError("[simulate] op #\(op.id) (\(op.kind.rawValue)) reads \(n), which is not in \(readTier.rawValue) then")
                }
                if at > start + 1e-12 {
                    throw OffloadError("[simulate] op #\(op.id) (\(op.kind.rawValue)) reads \(n) at \(start) s but it is complete in \(readTier.rawValue) only at \(at) s: missing dependency")
                }
            }
            for n in op.creates {
                if resident[createTier]![n] != nil {
                    throw OffloadError("[simulate] op #\(op.id) creates \(n) in \(createTier.rawValue), where it already is")
                }
                resident[createTier]![n] = end
            }
            if createBytes > 0 { tiers[createTier]!.add(time: start, delta: createBytes) }
            if op.tempBytes > 0 {
                tiers[.compute]!.add(time: start, delta: op.tempBytes)
                tiers[.compute]!.add(time: end, delta: -op.tempBytes)
            }
            let freeTier = op.tier
            for n in op.frees {
                guard let at = resident[freeTier]![n] else {
                    throw OffloadError("[simulate] op #\(op.id) frees \(n) in \(freeTier.rawValue), where it is not")
                }
                if at > end + 1e-12 {
                    throw OffloadError("[simulate] op #\(op.id) frees \(n) before it is complete: missing dependency")
                }
                resident[freeTier]![n] = nil
                tiers[freeTier]!.add(time: end, delta: -(sizes[n] ?? 0))
            }
            if op.kind == .prefetch || op.kind == .offload {
                moved["\((op.from ?? .compute).rawValue)→\(op.tier.rawValue)", default: 0] += createBytes
            }
            if op.stream == .compute && duration > 0 {
                computeBusy += duration
                lastComputeEnd = max(lastComputeEnd, end)
                if op.kind == .recompute { recompute += duration }
            }
            endOf[index] = end
            streamEnd[op.stream] = end
            ops.append(SimulatedOp(id: op.id, start: start, end: end, memoryWait: start - ready))
        }
        var leaks: [String] = []
        let initialSet = Set(initial.map { "\($0.tier.rawValue):\($0.tensor)" })
        var finalSet = Set<String>()
        for t in Tier.allCases { for n in resident[t]!.keys { finalSet.insert("\(t.rawValue):\(n)") } }
        leaks = Array(finalSet.symmetricDifference(initialSet)).sorted()
        let step = endOf.max() ?? 0
        var peak: [Tier: Int] = [:], timeline: [Tier: [MemoryPoint]] = [:]
        for t in Tier.allCases {
            let line = tiers[t]!.points()
            timeline[t] = line
            peak[t] = line.map(\.bytes).max() ?? tiers[t]!.base
        }
        return Simulation(stepSeconds: step, ops: ops, peak: peak, timeline: timeline, bytesMoved: moved,
                          computeSeconds: computeBusy, recomputeSeconds: recompute,
                          computeIdleSeconds: max(0, lastComputeEnd - computeBusy), leaks: leaks)
    }
}

/// Bytes in use in one tier as a list of (time, change) events.
struct MemoryLine {
    var budget: Int
    var base = 0
    var times: [Double] = []
    var deltas: [Int] = []

    /// Inserts keeping time order; at equal times frees come first.
    mutating func add(time: Double, delta: Int) {
        var lo = 0, hi = times.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if times[mid] < time || (times[mid] == time && (deltas[mid] < 0 || delta > 0)) { lo = mid + 1 } else { hi = mid }
        }
        times.insert(time, at: lo); deltas.insert(delta, at: lo)
    }

    /// Earliest start ≥ `from` at which holding `hold` bytes from then on, and
    /// `temp` more for `duration`, keeps the tier within its budget.
    func earliestFit(from: Double, hold: Int, temp: Int, duration: Double, op: Operation) throws -> Double {
        if budget == Int.max { return from }
        let n = times.count
        // usage after event i (prefix sums) and its suffix maximum.
        var usage = [Int](repeating: 0, count: n)
        var run = base
        for i in 0..<n { run += deltas[i]; usage[i] = run }
        var suffixMax = [Int](repeating: Int.min, count: n + 1)
        var i = n - 1
        while i >= 0 { suffixMax[i] = max(suffixMax[i + 1], usage[i]); i -= 1 }
        let finalUsage = run
        if finalUsage + hold > budget {
            throw ScheduleOverflow(op: op.id, error: OffloadError("[simulate] the \(op.kind.rawValue)\(op.stage.map { " of stage \($0)" } ?? "") (op #\(op.id)) needs \(formatBytes(hold + temp)), but \(formatBytes(finalUsage)) of the \(formatBytes(budget)) budget stay held until after it: \(formatBytes(max(0, budget - finalUsage))) are left"))
        }
        // Candidate starts: `from`, then each event time after it.
        var candidates = [from]
        var first = 0
        while first < n && times[first] <= from { first += 1 }
        for j in first..<n where deltas[j] < 0 { candidates.append(times[j]) }
        for t in candidates {
            // index of the first event strictly after t
            var k = 0, hi = n
            while k < hi { let mid = (k + hi) / 2; if times[mid] <= t { k = mid + 1 } else { hi = mid } }
            let atStart = k > 0 ? usage[k - 1] : base
            if atStart + hold + temp > budget { continue }
            // events in (t, t+duration) carry temp too; later ones only hold.
            var ok = true
            var j = k
            while j < n && times[j] < t + duration {
                if usage[j] + hold + temp > budget { ok = false; break }
                j += 1
            }
            if !ok { continue }
            if j < n && suffixMax[j] + hold > budget { continue }
            return t
        }
        throw ScheduleOverflow(op: op.id, error: OffloadError("[simulate] the \(op.kind.rawValue)\(op.stage.map { " of stage \($0)" } ?? "") (op #\(op.id)) needs \(formatBytes(hold + temp)) beside what the step holds then, and no moment of the \(formatBytes(budget)) budget leaves that much"))
    }

    func points() -> [MemoryPoint] {
        var out = [MemoryPoint(time: 0, bytes: base)]
        var run = base
        for i in 0..<times.count {
            run += deltas[i]
            if let last = out.last, last.time == times[i] { out[out.count - 1].bytes = run } else {
                out.append(MemoryPoint(time: times[i], bytes: run))
            }
        }
        return out
    }
}
