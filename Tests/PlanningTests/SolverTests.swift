// rotor and pofo against brute force over their schedule families, on small random chains.
import XCTest
import Memory
import Planning

/// Deterministic random numbers (SplitMix64) so failures reproduce.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func int(_ r: ClosedRange<Int>) -> Int { r.lowerBound + Int(next() % UInt64(r.count)) }
}

func randomChain(_ rng: inout SplitMix, stages n: Int, outputZero: Bool = false) -> RematChain {
    var input = (0...n).map { _ in rng.int(1...4) }
    if outputZero { input[n] = 0 }
    return RematChain(input: input, saved: (0..<n).map { _ in rng.int(0...6) },
                      forwardTemp: (0..<n).map { _ in rng.int(0...2) }, backwardTemp: (0..<n).map { _ in rng.int(0...2) },
                      forward: (0..<n).map { _ in Double(rng.int(1...5)) }, backward: (0..<n).map { _ in Double(rng.int(1...8)) })
}

/// Shortest path over every sequence of F_all / F_none / B / free operations in
/// rotor's family: anything may be freed and recomputed at any time, except that
/// what F_all(k) saved, and its input, stay until B_k (no other structure assumed).
func bruteForceRemat(_ c: RematChain, memory M: Int) -> Double {
    let n = c.count
    func aBit(_ k: Int) -> Int { 1 << k }                 // a_0 ... a_n
    func sBit(_ k: Int) -> Int { 1 << (n + 1 + k) }       // saved_0 ... saved_{n-1}
    func dBit(_ k: Int) -> Int { 1 << (2 * n + 1 + k) }   // δ_0 ... δ_n
    func mem(_ s: Int) -> Int {
        var m = 0
        for k in 0...n { if s & aBit(k) != 0 { m += c.input[k] }; if s & dBit(k) != 0 { m += c.input[k] } }
        for k in 0..<n where s & sBit(k) != 0 { m += c.saved[k] }
        return m
    }
    let start = aBit(0) | dBit(n)
    if mem(start) > M { return .infinity }
    var dist: [Int: Double] = [start: 0]
    var heap: [(Double, Int)] = [(0, start)]
    func push(_ e: (Double, Int)) {
        heap.append(e); var i = heap.count - 1
        while i > 0 { let p = (i - 1) / 2; if heap[p].0 <= heap[i].0 { break }; heap.swapAt(p, i); i = p }
    }
    func pop() -> (Double, Int) {
        let top = heap[0]; let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last; var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1; var m = i
                if l < heap.count && heap[l].0 < heap[m].0 { m = l }
                if r < heap.count && heap[r].0 < heap[m].0 { m = r }
                if m == i { break }; heap.swapAt(m, i); i = m
            }
        }
        return top
    }
    while !heap.isEmpty {
        let (d, s) = pop()
        if d > dist[s]! { continue }
        if s & dBit(0) != 0 { return d }
        let used = mem(s)
        func relax(_ t: Int, _ cost: Double) { if cost < dist[t] ?? .infinity { dist[t] = cost; push((cost, t)) } }
        for k in 0..<n where s & aBit(k) != 0 && s & aBit(k + 1) == 0 {
            if used + c.input[k + 1] + c.forwardTemp[k] <= M { relax(s | aBit(k + 1), d + c.forward[k]) }
            if s & sBit(k) == 0 && used + c.saved[k] + c.input[k + 1] + c.forwardTemp[k] <= M {
                relax(s | aBit(k + 1) | sBit(k), d + c.forward[k])
            }
        }
        for k in 0..<n where s & aBit(k) != 0 && s & sBit(k) != 0 && s & dBit(k + 1) != 0 {
            if used + c.input[k] + c.backwardTemp[k] <= M {
                relax((s & ~(aBit(k) | sBit(k) | dBit(k + 1))) | dBit(k), d + c.backward[k])
            }
        }
        // The family: what a forward saved for B_k (its activations and its input) stays until B_k.
        for k in 0...n where s & aBit(k) != 0 && (k == n || s & sBit(k) == 0) { relax(s & ~aBit(k), d) }
    }
    return .infinity
}

final class RotorTests: XCTestCase {
    func testRotorMatchesShortestPathOverAllSchedules() {
        var rng = SplitMix(state: 7)
        var compared = 0, constrained = 0
        for trial in 0..<60 {
            let n = 2 + trial % 5   // 2 ... 6 stages
            let c = randomChain(&rng, stages: n)
            let full = c.input.reduce(0, +) * 2 + c.saved.reduce(0, +) + 4
            let table = RotorTable(chain: c, slots: full)
            guard let minimum = table.minimumSlots else { XCTFail("no schedule at all"); continue }
            for m in [minimum - 1, minimum, (minimum + full) / 2, full] where m >= 0 {
                let dp = table.time(0, n - 1, m)
                let brute = bruteForceRemat(c, memory: m)
                XCTAssertEqual(dp, brute, "chain \(c) memory \(m)")
                compared += 1
                let keepAll = c.forward.reduce(0, +) + c.backward.reduce(0, +)
                if dp < .infinity && dp > keepAll { constrained += 1 }
            }
        }
        // The comparison must have exercised recomputation, not just keep-all.
        XCTAssertGreaterThan(constrained, 20, "compared \(compared)")
    }

    func testRotorActionsRespectTheirMemory() throws {
        var rng = SplitMix(state: 11)
        for _ in 0..<30 {
            let c = randomChain(&rng, stages: 6)
            let table = RotorTable(chain: c, slots: 60)
            guard let m = table.minimumSlots else { continue }
            // Replay the actions with the chain's own accounting.
            let actions = table.actions(0, c.count - 1, m)
            var resident: [String: Int] = ["a0": c.input[0], "d\(c.count)": c.input[c.count]]
            var peak = resident.values.reduce(0, +), time = 0.0
            func use(_ extra: Int) { peak = max(peak, resident.values.reduce(0, +) + extra) }
            for (i, a) in actions.enumerated() {
                switch a {
                case .forward(let k, let save):
                    XCTAssertNotNil(resident["a\(k)"], "forward \(k) without its input")
                    use(c.input[k + 1] + (save == .all ? c.saved[k] : 0) + c.forwardTemp[k])
                    resident["a\(k + 1)"] = c.input[k + 1]
                    if save == .all { resident["s\(k)"] = c.saved[k] }
                    if save == .none { resident["a\(k)"] = nil }
                    if i + 1 < actions.count, actions[i + 1] == .backward(k) { resident["a\(k + 1)"] = nil }
                    time += c.forward[k]
                case .backward(let k):
                    XCTAssertNotNil(resident["s\(k)"]); XCTAssertNotNil(resident["d\(k + 1)"])
                    use(c.input[k] + c.backwardTemp[k])
                    resident["a\(k)"] = nil; resident["s\(k)"] = nil; resident["d\(k + 1)"] = nil
                    resident["d\(k)"] = c.input[k]
                    time += c.backward[k]
                default: XCTFail("rotor emitted a transfer")
                }
            }
            XCTAssertLessThanOrEqual(peak, m)
            XCTAssertEqual(time, table.time(0, c.count - 1, m), accuracy: 1e-9)
            XCTAssertEqual(Set(resident.keys), ["d0"])
        }
    }
}

final class PofoTests: XCTestCase {
    /// Every sequence of choices, evaluated exactly (no memo, no rounding).
    func bruteForce(_ p: PofoProblem, _ rotor: RotorTable, _ s: PofoState) -> Double {
        if s.stage == p.chain.count { return p.finish(s) ?? .infinity }
        var best = Double.infinity
        for c in p.choices(at: s.stage) {
            guard let (t, next) = p.step(s, c, rotor: rotor) else { continue }
            best = min(best, t + bruteForce(p, rotor, next))
        }
        return best
    }

    func testPofoMatchesExhaustiveSearchOfItsFamily() {
        var rng = SplitMix(state: 3)
        var offloadingWins = 0, cases = 0
        for trial in 0..<40 {
            let n = 2 + trial % 5
            let c = randomChain(&rng, stages: n)
            let table = RotorTable(chain: c, slots: 40)
            guard let minimum = table.minimumSlots else { continue }
            for m in [max(0, minimum - 3), minimum, minimum + 4] {
                let p = PofoProblem(chain: c, slots: m, writeRate: Double(rng.int(1...3)), readRate: Double(rng.int(1...3)))
                let rt = RotorTable(chain: c, slots: m)
                var solver = PofoSolver(p, rotor: rt)
                let brute = bruteForce(p, rt, PofoState(stage: 0, kept: 0, pendingWrite: 0, pendingRead: 0))
                let dp = solver.solve()
                if brute == .infinity { XCTAssertNil(dp, "DP found a plan brute force did not: \(c) m \(m)"); continue }
                guard let (seconds, choices) = dp else { XCTFail("DP found nothing, brute force \(brute): \(c) m \(m)"); continue }
                XCTAssertEqual(seconds, brute, accuracy: 1e-6 * brute, "chain \(c) m \(m)")  // the memo keeps Float
                // The returned choices replay to the same time.
                var s = PofoState(stage: 0, kept: 0, pendingWrite: 0, pendingRead: 0), t = 0.0
                for ch in choices { let (dt, next) = p.step(s, ch, rotor: rt)!; t += dt; s = next }
                t += p.finish(s)!
                XCTAssertEqual(t, seconds, accuracy: 1e-6 * t)
                cases += 1
                if choices.contains(where: { if case .saveAll(true) = $0 { return true }; if case .checkpoint(_, true) = $0 { return true }; return false }) {
                    offloadingWins += 1
                }
            }
        }
        XCTAssertGreaterThan(cases, 60)
        XCTAssertGreaterThan(offloadingWins, 5, "the comparison must include plans that offload")
    }

    func testPofoNeverSlowerThanRotorAndUsesBandwidth() {
        var rng = SplitMix(state: 5)
        for _ in 0..<25 {
            let c = randomChain(&rng, stages: 6, outputZero: true)
            let table = RotorTable(chain: c, slots: 40)
            guard let minimum = table.minimumSlots else { continue }
            let m = minimum + 2
            let rt = RotorTable(chain: c, slots: m)
            var slow = PofoSolver(PofoProblem(chain: c, slots: m, writeRate: 1e-9, readRate: 1e-9), rotor: rt)
            var fast = PofoSolver(PofoProblem(chain: c, slots: m, writeRate: 1e6, readRate: 1e6), rotor: rt)
            let r = rt.time(0, c.count - 1, m)
            guard let f = fast.solve()?.seconds, let s = slow.solve()?.seconds else { XCTFail("pofo found nothing where rotor did"); continue }
            XCTAssertLessThanOrEqual(f, r + 1e-9)
            // With unbounded bandwidth offloading is free: no recomputation at all.
            XCTAssertEqual(f, c.forward.reduce(0, +) + c.backward.reduce(0, +), accuracy: 1e-3)
            XCTAssertGreaterThanOrEqual(s, f)
        }
    }
}
