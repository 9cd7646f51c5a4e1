// Training windows over one token sequence: window w is tokens[w·T ..< w·T + T + 1]
// for every w whose full window fits. Batch index k (counting micro-batches), row
// b, reads window (k·B + b) mod windowCount — or, with a shuffle seed, that
// position of a permutation drawn afresh (and deterministically) for each epoch.
// Inputs are a window's first T tokens, targets its last T. With a mask (fine-tuning on
// completions or assistant turns), a target whose token is not masked in is
// `LlamaTrainer.ignoredTarget`, and windows with no target left are skipped. Not here:
// reading or tokenizing files (the CLI and `FineTuningData` hand over ids).

import Models
import Tensors

public final class TokenWindows {
    public let tokens: [Int]
    /// Whether each token is trained on as a target (nil: all are).
    public let mask: [Bool]?
    public let seqLen: Int
    public let windowCount: Int
    /// The windows read (all of them, or with a mask those with a target trained on), by their number.
    private let usable: [Int]?
    public let shuffleSeed: UInt64?
    private var cachedEpoch = -1
    private var permutation: [Int] = []

    /// Checks every id against `vocabSize`; `source` names the data in messages.
    public init(tokens: [Int], mask: [Bool]? = nil, seqLen: Int, vocabSize: Int, shuffleSeed: UInt64? = nil,
                source: String = "data") throws {
        guard seqLen > 0 else { throw OffloadError("[data] \(source): sequence length must be positive") }
        guard !tokens.isEmpty else { throw OffloadError("[data] \(source): no tokens (is the file empty?)") }
        guard tokens.count >= seqLen + 1 else {
            throw OffloadError("[data] \(source): \(tokens.count) tokens is shorter than one training window "
                               + "(--seq-len \(seqLen) needs \(seqLen + 1))")
        }
        if let i = tokens.firstIndex(where: { $0 < 0 || $0 >= vocabSize }) {
            throw OffloadError("[data] \(source): token id \(tokens[i]) at position \(i) is outside the model's "
                               + "vocabulary (0..<\(vocabSize))")
        }
        self.tokens = tokens; self.mask = mask; self.seqLen = seqLen; self.shuffleSeed = shuffleSeed
        let all = (tokens.count - 1) / seqLen
        if let mask {
            guard mask.count == tokens.count else {
                throw OffloadError("[data] \(source): \(mask.count) mask entries for \(tokens.count) tokens")
            }
            let trained = (0..<all).filter { w in mask[w * seqLen + 1 ... w * seqLen + seqLen].contains(true) }
            guard !trained.isEmpty else {
                throw OffloadError("[data] \(source): no window of --seq-len \(seqLen) has a token to train on "
                                   + "(every token is prompt)")
            }
            usable = trained
            windowCount = trained.count
        } else {
            usable = nil
            windowCount = all
        }
    }

    /// The window read at position `g` of the stream of rows (g = k·B + b).
    public func window(at g: Int) -> Int {
        guard let seed = shuffleSeed else { return number(g % windowCount) }
        let epoch = g / windowCount
        if epoch != cachedEpoch {
            // Fisher–Yates from a generator seeded by (seed, epoch): any epoch can be rebuilt on resume.
            var rng = SeededGenerator(seed: seed ^ (UInt64(epoch) &* 0xD1B5_4A32_D192_ED03))
            permutation = Array(0..<windowCount)
            for i in stride(from: windowCount - 1, to: 0, by: -1) {
                permutation.swapAt(i, Int(rng.next() % UInt64(i + 1)))
            }
            cachedEpoch = epoch
        }
        return number(permutation[g % windowCount])
    }

    private func number(_ i: Int) -> Int { usable?[i] ?? i }

    /// Inputs and targets (each batch × seqLen ids, row-major) of batch `k`.
    public func batch(_ k: Int, size batch: Int) -> (inputs: [Int], targets: [Int]) {
        var inputs: [Int] = [], targets: [Int] = []
        inputs.reserveCapacity(batch * seqLen); targets.reserveCapacity(batch * seqLen)
        for b in 0..<batch {
            let s = window(at: k * batch + b) * seqLen
            inputs += tokens[s ..< s + seqLen]
            if let mask {
                targets += (s + 1 ..< s + seqLen + 1).map { mask[$0] ? tokens[$0] : LlamaTrainer.ignoredTarget }
            } else {
                targets += tokens[s + 1 ..< s + seqLen + 1]
            }
        }
        return (inputs, targets)
    }
}
