// Rotary position embedding, in both conventions: GGUF rotates adjacent pairs
// (x[2i], x[2i+1]); Hugging Face rotates halves (x[i], x[i + d/2]). The same
// frequencies: theta^(-2i/d), optionally rescaled for longer contexts (RopeScaling).

import Foundation

/// How a model rescales its RoPE frequencies to reach past the context it was trained on.
public enum RopeScaling: Sendable, Equatable, Codable {
    /// Every frequency divided by `factor` (Hugging Face `rope_type: linear`, GGUF `rope.scaling.type = linear`).
    case linear(factor: Float)
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between
    /// (Hugging Face `rope_type: llama3`).
    case llama3(factor: Float, lowFrequencyFactor: Float, highFrequencyFactor: Float, originalContext: Int)
    /// Frequency i divided by `divisors[i]`: llama.cpp's form of any per-frequency scaling, stored in
    /// GGUF as the `rope_freqs.weight` tensor (convert_hf_to_gguf writes Llama 3.1's this way).
    case divisors([Float])

    /// The inverse frequencies theta^(-2i/d), i < d/2, rescaled. In fp32 step by step as
    /// transformers' `_compute_*_parameters` compute them.
    public func apply(to invFreq: [Float]) -> [Float] {
        switch self {
        case .linear(let factor):
            return invFreq.map { $0 / factor }
        case .llama3(let factor, let low, let high, let original):
            let lowWavelen = Float(original) / low, highWavelen = Float(original) / high
            return invFreq.map { f in
                let wavelen = 2 * Float.pi / f
                let scaled = wavelen > lowWavelen ? f / factor : f
                guard !(wavelen < highWavelen), !(wavelen > lowWavelen) else { return scaled }
                let smooth = (Float(original) / wavelen - low) / (high - low)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        case .divisors(let d):
            return zip(invFreq, d).map { $0 / $1 }
        }
    }

    /// One line for people: "llama3 ×8 (low 1, high 4, original 8192)".
    public var summary: String {
        switch self {
        case .linear(let f): return "linear ×\(f)"
        case .llama3(let f, let low, let high, let original):
            return "llama3 ×\(f) (low \(low), high \(high), original \(original))"
        case .divisors(let d): return "per-frequency divisors \(d.min() ?? 1)…\(d.max() ?? 1)"
        }
    }

    /// The divisors llama.cpp applies (GGUF's `rope_freqs.weight`), for a model whose inverse
    /// frequencies are `invFreq` before scaling.
    public func divisors(for invFreq: [Float]) -> [Float] {
        if case .divisors(let d) = self { return d }
        return zip(invFreq, apply(to: invFreq)).map { $0 / $1 }
    }
}

/// cos/sin table for positions [0, maxPositions): (maxPositions, headDim/2) each.
public struct RopeTable: Sendable {
    public let headDim: Int
    public let cos: [Float]
    public let sin: [Float]

    public init(headDim: Int, maxPositions: Int, theta: Float, scaling: RopeScaling? = nil) {
        self.headDim = headDim
        let half = headDim / 2
        var c = [Float](repeating: 0, count: maxPositions * half), s = c
        let invFreq = RopeTable.inverseFrequencies(headDim: headDim, theta: theta, scaling: scaling)
        for i in 0..<half {
            for p in 0..<maxPositions {
                // As Hugging Face: inv_freq in fp32, then angle = pos · inv_freq in fp32.
                let angle = Float(p) * invFreq[i]
                c[p * half + i] = Foundation.cos(angle)
                s[p * half + i] = Foundation.sin(angle)
            }
        }
        cos = c; sin = s
    }
    public var maxPositions: Int { cos.count / (headDim / 2) }

    /// theta^(-2i/d) for i < d/2, then the model's scaling.
    public static func inverseFrequencies(headDim: Int, theta: Float, scaling: RopeScaling? = nil) -> [Float] {
        let f = (0..<headDim / 2).map { i in Float(1.0 / pow(Double(theta), Double(2 * i) / Double(headDim))) }
        return scaling?.apply(to: f) ?? f
    }
}

/// x: (rows, heads, headDim) rotated in place; row r sits at position positions[r].
public func ropeForward(_ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int,
                        heads: Int, table: RopeTable, halfSplit: Bool) {
    let d = table.headDim, half = d / 2
    table.cos.withUnsafeBufferPointer { cb in
        table.sin.withUnsafeBufferPointer { sb in
            for r in 0..<rows {
                let c = cb.baseAddress! + Int(positions[r]) * half, s = sb.baseAddress! + Int(positions[r]) * half
                for h in 0..<heads {
                    let v = x + (r * heads + h) * d
                    if halfSplit {
                        for i in 0..<half {
                            let a = v[i], b = v[i + half]
                            v[i] = a * c[i] - b * s[i]
                            v[i + half] = b * c[i] + a * s[i]
                        }
                    } else {
                        for i in 0..<half {
                            let a = v[2 * i], b = v[2 * i + 1]
                            v[2 * i] = a * c[i] - b * s[i]
                            v[2 * i + 1] = b * c[i] + a * s[i]
                        }
                    }
                }
            }
        }
    }
}
