import Memory
// pofo: rematerialization and offloading together, as a dynamic program over
// (stage, kept slots, slots still being written out, slots still to read back),
// after Beaumont, Eyraud-Dubois and Shilova, "Efficient Combination of
// Rematerialization and Offloading for Training DNNs", NeurIPS 2021. The
// segments it recomputes are solved by the rotor table.
import Foundation

/// The family of schedules pofo optimises over, and its cost model.
///
/// The forward sweep goes stage by stage; at stage i (its input a_i resident) it
/// either runs F_all(i) and keeps a_i with i's activations, or writes them out
/// (offload) to be read back before B_i; or it runs i … j without saving,
/// keeping or writing out only the checkpoint a_i, and later processes i … j by
/// rotor in the memory left. One write channel (`writeRate` slots/s) drains
/// pending writes `df` while compute runs; one read channel (`readRate`) reads
/// back, during the backward of later stages, the `db` slots earlier stages need.
/// Pending writes and all outstanding reads count as resident (a safe bound);
/// when a step would overflow, compute waits for the channel. At the turn from
/// forward to backward, what is left to write and read is waited for.
public struct PofoProblem: Sendable {
    public var chain: RematChain
    public var slots: Int
    public var writeRate: Double
    public var readRate: Double

    public init(chain: RematChain, slots: Int, writeRate: Double, readRate: Double) {
        self.chain = chain; self.slots = slots; self.writeRate = writeRate; self.readRate = readRate
    }
}

/// One decision of the forward sweep at stage i.
public enum PofoChoice: Sendable, Equatable, Hashable {
    case saveAll(offload: Bool)
    case checkpoint(end: Int, offload: Bool)
}

/// The state between two decisions.
public struct PofoState: Sendable, Equatable, Hashable {
    public var stage: Int
    public var kept: Int
    public var pendingWrite: Double
    public var pendingRead: Double
    public init(stage: Int, kept: Int, pendingWrite: Double, pendingRead: Double) {
        self.stage = stage; self.kept = kept; self.pendingWrite = pendingWrite; self.pendingRead = pendingRead
    }
}

extension PofoProblem {
    /// The choices possible at a stage.
    public func choices(at i: Int) -> [PofoChoice] {
        var out: [PofoChoice] = [.saveAll(offload: false), .saveAll(offload: true)]
        for j in i..<chain.count { out.append(.checkpoint(end: j, offload: false)); out.append(.checkpoint(end: j, offload: true)) }
        return out
    }

    /// Applies one choice: its own time (forward, stalls, the segment's backward)
    /// and the next state; nil if it cannot fit.
    public func step(_ st: PofoState, _ c: PofoChoice, rotor: RotorTable) -> (seconds: Double, next: PofoState)? {
        let x = chain.input, n = chain.count, M = slots, i = st.stage
        let out = x[n]
        var df = st.pendingWrite
        var seconds = 0.0
        // Runs one forward whose peak is `need` besides what is kept and pending.
        func forward(_ need: Int, _ k: Int) -> Bool {
            let excess = Double(out + st.kept + need) + df - Double(M)
            if excess > 0 {
                if excess > df + 1e-9 { return false }
                seconds += excess / writeRate; df -= excess
            }
            seconds += chain.forward[k]
            df = max(0, df - chain.forward[k] * writeRate)
            return true
        }
        switch c {
        case .saveAll(let offload):
            guard forward(chain.forwardAllPeak(i), i) else { return nil }
            let unit = x[i] + chain.saved[i]
            let bneed = Double(out + st.kept + unit + x[i + 1] + x[i] + chain.backwardTemp[i]) + st.pendingRead
            let excessB = max(0, bneed - Double(M))
            if excessB > st.pendingRead + 1e-9 { return nil }
            seconds += excessB / readRate + chain.backward[i]
            var db = max(0, st.pendingRead - excessB - chain.backward[i] * readRate)
            var kept = st.kept
            if offload { df += Double(unit); db += Double(unit) } else { kept += unit }
            return (seconds, PofoState(stage: i + 1, kept: kept, pendingWrite: df, pendingRead: db))
        case .checkpoint(let j, let offload):
            for k in i...j {
                let need = x[i] + (k > i ? x[k] : 0) + x[k + 1] + chain.forwardTemp[k]
                guard forward(need, k) else { return nil }
            }
            // The segment's backward: rotor in what the outer state leaves.
            let mSeg = Int((Double(M - out - st.kept) - st.pendingRead).rounded(.down))
            let seg = rotor.time(i, j, mSeg)
            if seg == .infinity { return nil }
            seconds += seg
            var db = max(0, st.pendingRead - seg * readRate)
            var kept = st.kept
            if offload { df += Double(x[i]); db += Double(x[i]) } else { kept += x[i] }
            return (seconds, PofoState(stage: j + 1, kept: kept, pendingWrite: df, pendingRead: db))
        }
    }

    /// The turn: wait for writes to finish and for reads nothing overlaps.
    public func finish(_ st: PofoState) -> Double? {
        let need = Double(chain.input[chain.count] + st.kept) + max(st.pendingWrite, st.pendingRead)
        if need > Double(slots) + 1e-9 { return nil }
        return st.pendingWrite / writeRate + st.pendingRead / readRate
    }
}

/// The pofo dynamic program, memoised on (stage, kept, ⌈pending write⌉, ⌈pending read⌉).
public struct PofoSolver {
    public let problem: PofoProblem
    public let rotor: RotorTable
    var memo: [Float]
    let M: Int

    public init(_ problem: PofoProblem, rotor: RotorTable? = nil) {
        self.problem = problem
        self.rotor = rotor ?? RotorTable(chain: problem.chain, slots: problem.slots)
        M = problem.slots
        memo = [Float](repeating: .nan, count: (problem.chain.count + 1) * (M + 1) * (M + 1) * (M + 1))
    }

    func key(_ s: PofoState) -> PofoState {
        PofoState(stage: s.stage, kept: s.kept, pendingWrite: s.pendingWrite.rounded(.up), pendingRead: s.pendingRead.rounded(.up))
    }

    /// Least remaining time from a state (infinity if nothing fits).
    public mutating func value(_ raw: PofoState) -> Double {
        let s = key(raw)
        let w = Int(s.pendingWrite), r = Int(s.pendingRead)
        if s.kept > M || w > M || r > M { return .infinity }
        let idx = ((s.stage * (M + 1) + s.kept) * (M + 1) + w) * (M + 1) + r
        if !memo[idx].isNaN { return Double(memo[idx]) }
        var best = Double.infinity
        if s.stage == problem.chain.count {
            best = problem.finish(s) ?? .infinity
        } else {
            for c in problem.choices(at: s.stage) {
                guard let (t, next) = problem.step(s, c, rotor: rotor) else { continue }
                if t >= best { continue }
                let v = t + value(next)
                if v < best { best = v }
            }
        }
        memo[idx] = Float(best)
        return best
    }

    /// The best choices from the start, and the predicted time.
    public mutating func solve() -> (seconds: Double, choices: [PofoChoice])? {
        let start = PofoState(stage: 0, kept: 0, pendingWrite: 0, pendingRead: 0)
        let total = value(start)
        if total == .infinity { return nil }
        var s = key(start)
        var path: [PofoChoice] = []
        while s.stage < problem.chain.count {
            var bestC: PofoChoice? = nil, bestV = Double.infinity, bestNext = s
            for c in problem.choices(at: s.stage) {
                guard let (t, next) = problem.step(s, c, rotor: rotor) else { continue }
                let v = t + value(next)
                if v < bestV { bestV = v; bestC = c; bestNext = next }
            }
            guard let c = bestC else { return nil }
            path.append(c); s = key(bestNext)
        }
        return (total, path)
    }

    /// The chain actions of a list of choices: the forward sweep, then backward
    /// in reverse, each read-back issued as the backward of the next unit begins.
    public func actions(_ choices: [PofoChoice]) -> [ChainAction] {
        var s = key(PofoState(stage: 0, kept: 0, pendingWrite: 0, pendingRead: 0))
        var forwardPart: [ChainAction] = []
        var backwardParts: [[ChainAction]] = []
        var prefetches: [ChainAction?] = []
        for c in choices {
            let i = s.stage
            let next = problem.step(s, c, rotor: rotor)?.next ?? s
            switch c {
            case .saveAll(let off):
                forwardPart.append(.forward(i, .all))
                if off { forwardPart.append(.offload(i, .all)) }
                backwardParts.append([.backward(i)])
                prefetches.append(off ? .prefetch(i, .all) : nil)
            case .checkpoint(let j, let off):
                forwardPart.append(.forward(i, .input))
                if off { forwardPart.append(.offload(i, .input)) }
                if i < j { for k in (i + 1)...j { forwardPart.append(.forward(k, .none)) } }
                let mSeg = Int((Double(M - problem.chain.input[problem.chain.count] - s.kept) - s.pendingRead).rounded(.down))
                var seg = rotor.actions(i, j, mSeg)
                // The sweep above already made a_{j+1}; rotor's plan starts from a_i alone.
                if case .forward(let k0, _) = seg.first, k0 == i {} else { seg = [] }
                backwardParts.append(seg)
                prefetches.append(off ? .prefetch(i, .input) : nil)
            }
            s = key(next)
        }
        // Backward: units in reverse; unit u's read-back is issued before unit u+1's backward.
        var out = forwardPart
        let units = backwardParts.count
        for u in stride(from: units - 1, through: 0, by: -1) {
            if u == units - 1, let p = prefetches[u] { out.append(p) }
            if u > 0, let p = prefetches[u - 1] { out.append(p) }
            out += backwardParts[u]
        }
        return out
    }
}
