import Memory
// The activation strategies of the literature, each a pure function from the
// chain (and, for the optimal ones, the memory they may use) to chain actions.
import Foundation

/// How activations are handled between forward and backward.
public enum ActivationStrategy: String, Codable, Sendable, CaseIterable {
    /// Keep every activation (no recompute, no transfers).
    case keep
    /// Checkpoint every stage boundary; recompute each stage right before its backward.
    case recompute
    /// Chen et al. 2016: ⌈√n⌉ segments, checkpoints at their starts.
    case sqrt
    /// The optimal rematerialization schedule for the memory (rotor / Revolve).
    case rotor
    /// SSDTrain: write every stage's activations out, read them back for the backward.
    case offload
    /// The optimal combined rematerialization + offloading schedule (Beaumont et al. 2021).
    case pofo
}

public enum ChainStrategies {
    public static func keep(_ n: Int) -> [ChainAction] {
        (0..<n).map { .forward($0, .all) } + (0..<n).reversed().map { .backward($0) }
    }

    public static func recompute(_ n: Int) -> [ChainAction] {
        var out: [ChainAction] = (0..<(n - 1)).map { .forward($0, .input) }
        out += [.forward(n - 1, .all), .backward(n - 1)]
        for k in stride(from: n - 2, through: 0, by: -1) { out += [.forward(k, .all), .backward(k)] }
        return out
    }

    /// Segments of ⌈√n⌉ stages; the last segment keeps everything on its first pass.
    public static func sqrt(_ n: Int) -> [ChainAction] {
        let length = max(1, Int(Double(n).squareRoot().rounded(.up)))
        let starts = Array(stride(from: 0, to: n, by: length))
        var out: [ChainAction] = []
        for (si, s) in starts.enumerated() {
            let e = min(n, s + length) - 1
            if si == starts.count - 1 {
                for k in s...e { out.append(.forward(k, .all)) }
            } else {
                out.append(.forward(s, .input))
                if s < e { for k in (s + 1)...e { out.append(.forward(k, .none)) } }
            }
        }
        for (si, s) in starts.enumerated().reversed() {
            let e = min(n, s + length) - 1
            if si != starts.count - 1 { for k in s...e { out.append(.forward(k, .all)) } }
            for k in (s...e).reversed() { out.append(.backward(k)) }
        }
        return out
    }

    /// Every stage but the last writes its input and activations out after its
    /// forward; each is read back while the backward of the stage after it runs.
    public static func offload(_ n: Int) -> [ChainAction] {
        var out: [ChainAction] = []
        for k in 0..<n {
            out.append(.forward(k, .all))
            if k < n - 1 { out.append(.offload(k, .all)) }
        }
        for k in stride(from: n - 1, through: 0, by: -1) {
            if k >= 1 { out.append(.prefetch(k - 1, .all)) }
            out.append(.backward(k))
        }
        return out
    }

    /// Generation: one forward per stage, nothing kept.
    public static func decode(_ n: Int) -> [ChainAction] { (0..<n).map { .forward($0, .none) } }
}
