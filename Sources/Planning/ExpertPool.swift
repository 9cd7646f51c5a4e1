// The hit-rate model of expert offloading: a routing trace (the experts each forward's blocks chose,
// recorded by `generate --routing-trace`) replayed through a pool of slots under a policy, the way
// Runtime's ExpertCache serves it without read-ahead. Routing does not depend on where experts are,
// so for the same prompt and tokens the replay gives the run's hits exactly.
import Foundation
import Tensors

/// Which resident expert a miss evicts.
public enum ExpertPolicy: String, CaseIterable, Sendable {
    /// The least recently used (mixtral-offloading's per-layer LRU, here over one pool).
    case lru
    /// The least frequently used so far (counts kept for evicted experts too), ties by recency:
    /// keeps the experts routing favours, which LRU evicts after a burst of rare ones.
    case lfu
}

/// One block of one forward in a routing trace: the experts each row chose (ascending).
public struct RoutingStep: Sendable, Equatable {
    public var layer: Int
    public var rows: [[Int]]
    public init(layer: Int, rows: [[Int]]) { self.layer = layer; self.rows = rows }

    /// The experts the block reads, in the order it asks for them (ascending, each once).
    public var experts: [Int] { Array(Set(rows.joined())).sorted() }
}

public enum RoutingTrace {
    /// One JSON object per line: {"layer": L, "experts": [[e, ...] per row]}.
    public static func line(_ s: RoutingStep) -> String {
        "{\"layer\":\(s.layer),\"experts\":[" + s.rows.map { "[" + $0.map(String.init).joined(separator: ",") + "]" }
            .joined(separator: ",") + "]}"
    }

    public static func read(path: String, layers: Int, experts: Int) throws -> [RoutingStep] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[routing-trace] \(path): cannot read the file")
        }
        var out: [RoutingStep] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n").enumerated() {
            func bad(_ what: String) -> OffloadError { OffloadError("[routing-trace] \(path) line \(n + 1): \(what)") }
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let l = o["layer"] as? Int, let rows = o["experts"] as? [[Int]] else {
                throw bad("expected {\"layer\": N, \"experts\": [[ids] per row]}")
            }
            guard l >= 0 && l < layers else { throw bad("layer \(l) is outside the model's \(layers) blocks") }
            guard rows.allSatisfy({ $0.allSatisfy { $0 >= 0 && $0 < experts } }) else {
                throw bad("an expert id is outside the model's \(experts) experts")
            }
            out.append(RoutingStep(layer: l, rows: rows))
        }
        guard !out.isEmpty else { throw OffloadError("[routing-trace] \(path): no routing steps") }
        return out
    }
}

/// A pool of `slots` experts replaying a trace: the hits and misses of each demand.
public struct ExpertPoolSimulation: Sendable {
    public var demands = 0, hits = 0
    /// Misses in blocks of one row (decode steps), and those steps: the per-token read rate.
    public var decodeMisses = 0, decodeSteps = 0

    public init(trace: [RoutingStep], slots: Int, policy: ExpertPolicy) {
        struct Key: Hashable { var layer: Int, expert: Int }
        var resident: [Key?] = Array(repeating: nil, count: slots)
        var lastUse = Array(repeating: 0, count: slots)
        var index: [Key: Int] = [:], uses: [Key: Int] = [:]
        var clock = 0
        for step in trace {
            if step.rows.count == 1 && step.layer == 0 { decodeSteps += 1 }
            for e in step.experts {
                let key = Key(layer: step.layer, expert: e)
                clock += 1
                uses[key, default: 0] += 1
                demands += 1
                if let s = index[key] { hits += 1; lastUse[s] = clock; continue }
                if step.rows.count == 1 { decodeMisses += 1 }
                // The victim ExpertCache picks: the first empty slot, else by the policy.
                var v = resident.firstIndex(where: { $0 == nil })
                if v == nil {
                    var best = 0
                    for i in 1..<slots {
                        switch policy {
                        case .lru: if lastUse[i] < lastUse[best] { best = i }
                        case .lfu:
                            let (ui, ub) = (uses[resident[i]!] ?? 0, uses[resident[best]!] ?? 0)
                            if ui < ub || (ui == ub && lastUse[i] < lastUse[best]) { best = i }
                        }
                    }
                    v = best
                }
                if let old = resident[v!] { index[old] = nil }
                resident[v!] = key
                index[key] = v!
                lastUse[v!] = clock
            }
        }
    }

    public var hitRate: Double { demands > 0 ? Double(hits) / Double(demands) : 0 }
}
