// Perplexity of a token sequence: every token after the first is scored exactly
// once, with a context that restarts every `seqLen` tokens (windows of seqLen+1
// tokens, stride seqLen; the last window may be shorter).

import Foundation
import Models
import Tensors

public struct PerplexityResult: Sendable {
    public var tokensScored: Int
    public var totalNLL: Double
    public var meanNLL: Double { tokensScored > 0 ? totalNLL / Double(tokensScored) : .nan }
    public var perplexity: Double { Foundation.exp(meanNLL) }
}

/// Windows [start, end) over `count` tokens, as defined above.
public func perplexityWindows(count: Int, seqLen: Int) -> [Range<Int>] {
    stride(from: 0, to: max(count - 1, 0), by: seqLen).map { $0..<min($0 + seqLen + 1, count) }
}

public func perplexity(model: LlamaModel, tokens: [Int], seqLen: Int,
                       progress: (Int, Int) -> Void = { _, _ in }) throws -> PerplexityResult {
    guard tokens.count >= 2 else {
        throw OffloadError("[eval] the text has \(tokens.count) token(s); at least 2 are needed to score one")
    }
    guard seqLen >= 1, seqLen + 1 <= model.maxPositions else {
        throw OffloadError("[eval] --seq-len must be between 1 and \(model.maxPositions - 1), got \(seqLen)")
    }
    let cache = model.makeCache(capacity: seqLen + 1)
    let vocab = model.config.vocabSize
    var result = PerplexityResult(tokensScored: 0, totalNLL: 0)
    let windows = perplexityWindows(count: tokens.count, seqLen: seqLen)
    for (w, range) in windows.enumerated() {
        try cache.reset()
        let window = Array(tokens[range])
        let logits = try model.forward(Array(window.dropLast()), cache: cache, allLogits: true)
        // Each row's negative log-likelihood on the pool (a softmax over the whole vocabulary
        // each), then summed in order: the same total as one thread computes.
        let rows = window.count - 1
        var nll = [Double](repeating: 0, count: rows)
        logits.withUnsafeBufferPointer { l in
            nll.withUnsafeMutableBufferPointer { out in
                model.pool.forEach(items: rows) { begin, end, _ in
                    for i in begin..<end {
                        let row = l.baseAddress! + i * vocab
                        var m = -Float.infinity
                        for j in 0..<vocab { m = max(m, row[j]) }
                        var z = 0.0
                        for j in 0..<vocab { z += Foundation.exp(Double(row[j] - m)) }
                        out[i] = Foundation.log(z) + Double(m) - Double(row[window[i + 1]])
                    }
                }
            }
        }
        for v in nll { result.totalNLL += v }
        result.tokensScored += window.count - 1
        progress(w + 1, windows.count)
    }
    return result
}
