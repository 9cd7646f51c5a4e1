import Memory
// rotor: the optimal rematerialization schedule for a chain under a memory
// budget (Beaumont, Eyraud-Dubois, Herrmann, Joly, Shilova 2019; Revolve for
// the homogeneous case), as a dynamic program over (segment, memory slots).
// Only activations are planned here; parameters are the builder's business.
import Foundation

/// A chain as the activation planners see it: sizes in bytes (or slots), times in seconds.
///
/// Stage k reads boundary k (`input[k]`, with `input[n]` the chain's output, whose
/// gradient seeds the backward), keeps `saved[k]` when run saving everything,
/// and needs `forwardTemp[k]` / `backwardTemp[k]` while it runs.
public struct RematChain: Sendable, Equatable, Codable {
    public var input: [Int]
    public var saved: [Int]
    public var forwardTemp: [Int]
    public var backwardTemp: [Int]
    public var forward: [Double]
    public var backward: [Double]

    public init(input: [Int], saved: [Int], forwardTemp: [Int], backwardTemp: [Int], forward: [Double], backward: [Double]) {
        self.input = input; self.saved = saved; self.forwardTemp = forwardTemp; self.backwardTemp = backwardTemp
        self.forward = forward; self.backward = backward
    }

    public var count: Int { saved.count }

    public init(_ chain: ModelChain) {
        self.init(input: (0...chain.count).map(chain.boundaryBytes), saved: chain.stages.map(\.savedBytes),
                  forwardTemp: chain.stages.map(\.forwardTempBytes), backwardTemp: chain.stages.map(\.backwardTempBytes),
                  forward: chain.stages.map(\.forwardSeconds), backward: chain.stages.map(\.backwardSeconds))
    }

    /// The same chain in slots of `slot` bytes, each size rounded up so that a
    /// plan that fits in slots fits in bytes.
    public func discretized(slot: Double) -> RematChain {
        func up(_ v: Int) -> Int { v == 0 ? 0 : Int((Double(v) / slot).rounded(.up)) }
        return RematChain(input: input.map(up), saved: saved.map(up), forwardTemp: forwardTemp.map(up),
                          backwardTemp: backwardTemp.map(up), forward: forward, backward: backward)
    }

    /// Memory while F_all of stage k runs, besides what else is resident.
    func forwardAllPeak(_ k: Int) -> Int { input[k] + saved[k] + input[k + 1] + forwardTemp[k] }
    /// Memory while B_k runs: its input, saved activations, incoming and outgoing gradient.
    func backwardPeak(_ k: Int) -> Int { input[k] + saved[k] + input[k + 1] + input[k] + backwardTemp[k] }
}

/// The rotor dynamic program.
///
/// `C(s, t, m)`: least time to turn (a_s, δ_{t+1}) into δ_s using at most m slots,
/// m counting a_s and δ_{t+1}. Either run F_all of s, keep its activations and
/// solve (s+1, t) in what is left, then B_s; or run s … j-1 without saving
/// (keeping a_s), solve (j, t) with a_j as the new checkpoint, then solve (s, j-1)
/// again from a_s. The table is filled by increasing segment length.
public struct RotorTable: Sendable {
    public let chain: RematChain
    public let slots: Int
    let n: Int
    var cost: [Double]
    var choice: [Int32]   // -2 infeasible, -1 leaf, 0 keep-all at s, j > 0 checkpoint at j

    func pair(_ s: Int, _ t: Int) -> Int { t * (t + 1) / 2 + s }
    func index(_ s: Int, _ t: Int, _ m: Int) -> Int { pair(s, t) * (slots + 1) + m }

    /// Least time for stages s...t with m slots (m includes a_s and δ_{t+1}); infinity if none fits.
    public func time(_ s: Int, _ t: Int, _ m: Int) -> Double {
        m < 0 ? .infinity : cost[index(s, t, min(m, slots))]
    }

    public init(chain: RematChain, slots: Int) {
        self.chain = chain; self.slots = slots; n = chain.count
        let pairs = n * (n + 1) / 2
        cost = [Double](repeating: .infinity, count: pairs * (slots + 1))
        choice = [Int32](repeating: -2, count: pairs * (slots + 1))
        let x = chain.input, f = chain.forward, b = chain.backward
        let M = slots
        for d in 0..<n {
            for s in 0..<(n - d) {
                let t = s + d
                let base = pair(s, t) * (M + 1)
                if d == 0 {
                    let need = max(x[t + 1] + chain.forwardAllPeak(s), chain.backwardPeak(s))
                    if need <= M { for m in need...M { cost[base + m] = f[s] + b[s]; choice[base + m] = -1 } }
                    continue
                }
                // Option A: keep everything of s.
                let needA = max(x[t + 1] + chain.forwardAllPeak(s), chain.backwardPeak(s))
                let keepA = x[s] + chain.saved[s]
                // Option B's forward needs, for j = s+1 ... t: running max of the no-save sweep.
                var sweepNeed = [Int](repeating: 0, count: t + 1)
                var sweepTime = [Double](repeating: 0, count: t + 1)
                var need = x[t + 1] + x[s] + x[s + 1] + chain.forwardTemp[s]
                var time = f[s]
                sweepNeed[s + 1] = need; sweepTime[s + 1] = time
                if s + 2 <= t {
                    for j in (s + 2)...t {
                        let k = j - 1
                        need = max(need, x[t + 1] + x[s] + x[k] + x[k + 1] + chain.forwardTemp[k])
                        time += f[k]
                        sweepNeed[j] = need; sweepTime[j] = time
                    }
                }
                for m in 0...M {
                    var best = Double.infinity
                    var what: Int32 = -2
                    if m >= needA && m - keepA >= 0 {
                        let sub = cost[index(s + 1, t, m - keepA)]
                        if sub < .infinity { best = f[s] + sub + b[s]; what = 0 }
                    }
                    if m - x[s] >= 0 {
                        for j in (s + 1)...t where sweepNeed[j] <= m {
                            let right = cost[index(j, t, m - x[s])]
                            if right == .infinity { continue }
                            let left = cost[index(s, j - 1, m)]
                            let c = sweepTime[j] + right + left
                            if c < best { best = c; what = Int32(j) }
                        }
                    }
                    cost[base + m] = best; choice[base + m] = what
                }
            }
        }
    }

    /// The least number of slots the whole chain can be processed in (nil if more than `slots`).
    public var minimumSlots: Int? {
        guard n > 0 else { return 0 }
        for m in 0...slots where time(0, n - 1, m) < .infinity { return m }
        return nil
    }

    /// The actions of the optimal schedule for stages s...t with m slots.
    public func actions(_ s: Int, _ t: Int, _ m: Int) -> [ChainAction] {
        var out: [ChainAction] = []
        append(s, t, min(m, slots), to: &out)
        return out
    }

    func append(_ s: Int, _ t: Int, _ m: Int, to out: inout [ChainAction]) {
        let what = choice[index(s, t, m)]
        switch what {
        case -1:
            out.append(.forward(s, .all)); out.append(.backward(s))
        case 0:
            out.append(.forward(s, .all))
            append(s + 1, t, m - chain.input[s] - chain.saved[s], to: &out)
            out.append(.backward(s))
        case let j where j > 0:
            let j = Int(j)
            out.append(.forward(s, .input))
            if s + 1 < j { for k in (s + 1)..<j { out.append(.forward(k, .none)) } }
            append(j, t, m - chain.input[s], to: &out)
            append(s, j - 1, m, to: &out)
        default:
            break
        }
    }
}
