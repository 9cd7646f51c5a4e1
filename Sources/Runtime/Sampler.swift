// Next-token choice: greedy at temperature 0, otherwise temperature, top-k and
// top-p (nucleus) sampling from a SeededGenerator, so a seed reproduces a run.

import Foundation
import Tensors

public struct SamplingOptions: Sendable {
    public var temperature: Float = 0.8
    public var topK: Int = 40
    public var topP: Float = 0.95
    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95) {
        self.temperature = temperature; self.topK = topK; self.topP = topP
    }
}

public struct Sampler {
    public var options: SamplingOptions
    public var rng: SeededGenerator
    public init(options: SamplingOptions, seed: UInt64) { self.options = options; rng = SeededGenerator(seed: seed) }

    /// The id of the largest logit (the lowest id on ties).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    /// The k largest logits' ids by insertion into a small sorted list: O(n·k) but
    /// k ≤ 64 and one pass over the vocabulary, far cheaper than sorting it.
    static func topK(_ l: UnsafeBufferPointer<Float>, _ k: Int) -> [Int] {
        var ids: [Int] = []
        ids.reserveCapacity(k + 1)
        for i in 0..<l.count {
            if ids.count == k, l[i] <= l[ids[k - 1]] { continue }
            var j = ids.count
            while j > 0, l[ids[j - 1]] < l[i] { j -= 1 }
            ids.insert(i, at: j)
            if ids.count > k { ids.removeLast() }
        }
        return ids
    }

    public mutating func sample(_ logits: [Float]) -> Int {
        logits.withUnsafeBufferPointer { l in
            if options.temperature <= 0 { return Self.argmax(l) }
            // Top-k candidates, largest logit first (ties: lower id first).
            let k = options.topK > 0 ? min(options.topK, l.count) : l.count
            let idx = k <= 64 ? Self.topK(l, k)
                : Array((0..<l.count).sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }.prefix(k))
            let m = l[idx[0]]
            var p = idx.map { Double(expf((l[$0] - m) / options.temperature)) }
            let z = p.reduce(0, +)
            for i in p.indices { p[i] /= z }
            // Top-p: the smallest prefix whose mass reaches topP.
            var keep = p.count
            if options.topP < 1 {
                var acc = 0.0
                for i in p.indices {
                    acc += p[i]
                    if acc >= Double(options.topP) { keep = i + 1; break }
                }
            }
            let mass = p[..<keep].reduce(0, +)
            var r = Double.random(in: 0..<1, using: &rng) * mass
            for i in 0..<keep {
                r -= p[i]
                if r < 0 { return idx[i] }
            }
            return idx[keep - 1]
        }
    }
}
