// The hit-rate model of expert offloading: a routing trace (the experts each forward's blocks chose,
// recorded by `generate --routing-trace`) replayed through a pool of slots under a policy, the way
// Runtime's ExpertCache serves it without read-ahead. Routing does not depend on where experts are,
// so for the same prompt and tokens the replay gives the run's hits exactly.
import Foundation
import Tensors

/// Which resident expert a miss evicts.
public enum ExpertPolicy: String, CaseIterable, Sendable {
    /// What `generate --budget` and `plan` use unless told: on real routing (BENCHMARKS.md) LFU kept the
    /// most experts at every pool size, and LRU with read-ahead the fewest.
    public static let standard = ExpertPolicy.lfu

    /// The least recently used (mixtral-offloading's per-layer LRU, here over one pool).
    case lru
    /// The least frequently used so far (counts kept for evicted experts too), ties by recency:
    /// keeps the experts routing favours, which LRU evicts after a burst of rare ones.
    case lfu
    /// The expert whose block comes farthest ahead in the forward's order (the block just computed
    /// first, the next block last), ties by recency: Belady's choice when blocks run in a cycle and
    /// routing is unknown, and the one that lets read-ahead coexist with a pool smaller than a token's
    /// experts (LRU then evicts exactly the next blocks' experts, a loop larger than the cache).
    case farthest

    /// How far ahead block `layer`'s next use is when block `current` is computing (1: the next block;
    /// `layers`: `current` itself, whose experts not in use now are next used a forward later).
    static func distance(_ layer: Int, from current: Int, layers: Int) -> Int {
        (layer - current - 1 + 2 * layers) % layers + 1
    }

    /// Whether resident expert `x` goes before `y` (`uses`: so far; `current`: the block
    /// being computed).
    public func evicts(_ x: (layer: Int, lastUse: Int, uses: Int), before y: (layer: Int, lastUse: Int, uses: Int),
                current: Int, layers: Int) -> Bool {
        switch self {
        case .lru: return x.lastUse < y.lastUse
        case .lfu: return x.uses < y.uses || (x.uses == y.uses && x.lastUse < y.lastUse)
        case .farthest:
            let (dx, dy) = (Self.distance(x.layer, from: current, layers: layers), Self.distance(y.layer, from: current, layers: layers))
            return dx > dy || (dx == dy && x.lastUse < y.lastUse)
        }
    }
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

    /// Replays as ExpertCache serves a block: every expert the block uses counted in ascending order
    /// (a resident one is a hit and becomes the most recent), each miss given a slot no expert of the
    /// block holds (the first empty one, else the policy's victim); a miss with no such slot waits
    /// until the block's earlier experts are done and takes a slot among those.
    /// (`hits` counts a block's expert resident when the block starts, even if a pool smaller than
    /// the block's experts must read it again before its turn.)
    public init(trace: [RoutingStep], slots: Int, policy: ExpertPolicy, layers: Int) {
        struct Key: Hashable { var layer: Int, expert: Int }
        var resident: [Key?] = Array(repeating: nil, count: slots)
        var lastUse = Array(repeating: 0, count: slots)
        var index: [Key: Int] = [:], uses: [Key: Int] = [:]
        var clock = 0
        var current = 0
        func victim(excluding needed: Set<Key>) -> Int? {
            if let e = resident.firstIndex(where: { $0 == nil }) { return e }
            var best: Int?
            func info(_ i: Int) -> (layer: Int, lastUse: Int, uses: Int) {
                (resident[i]!.layer, lastUse[i], uses[resident[i]!] ?? 0)
            }
            for i in 0..<slots where !needed.contains(resident[i]!) {
                guard let b = best else { best = i; continue }
                if policy.evicts(info(i), before: info(b), current: current, layers: layers) { best = i }
            }
            return best
        }
        func place(_ key: Key, _ v: Int, _ time: Int) {
            if let old = resident[v] { index[old] = nil }
            resident[v] = key
            index[key] = v
            lastUse[v] = time
        }
        for step in trace {
            if step.rows.count == 1 && step.layer == 0 { decodeSteps += 1 }
            current = step.layer
            let keys = step.experts.map { Key(layer: step.layer, expert: $0) }
            var needed = Set(keys)
            var waiting: [(key: Key, time: Int)] = []
            for key in keys {
                clock += 1
                uses[key, default: 0] += 1
                demands += 1
                if let s = index[key] { hits += 1; lastUse[s] = clock; continue }
                if step.rows.count == 1 { decodeMisses += 1 }
                if let v = victim(excluding: needed) { place(key, v, clock) } else { waiting.append((key, clock)) }
            }
            // The block's experts are used and released in order; a waiting miss takes a slot then (one
            // of the block's later experts, if every slot holds one: that one is read again in its turn).
            for key in keys {
                if index[key] == nil, let v = victim(excluding: needed) ?? victim(excluding: []) {
                    place(key, v, waiting.first { $0.key == key }?.time ?? clock)
                }
                needed.remove(key)
            }
        }
    }

    public var hitRate: Double { demands > 0 ? Double(hits) / Double(demands) : 0 }
}
