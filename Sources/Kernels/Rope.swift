// Rotary position embedding, in both conventions: GGUF rotates adjacent pairs
// (x[2i], x[2i+1]); Hugging Face rotates halves (x[i], x[i + d/2]). The same
// frequencies: theta^(-2i/d).

import Foundation

/// cos/sin table for positions [0, maxPositions): (maxPositions, headDim/2) each.
public struct RopeTable: Sendable {
    public let headDim: Int
    public let cos: [Float]
    public let sin: [Float]

    public init(headDim: Int, maxPositions: Int, theta: Float) {
        self.headDim = headDim
        let half = headDim / 2
        var c = [Float](repeating: 0, count: maxPositions * half), s = c
        for i in 0..<half {
            // As Hugging Face: inv_freq in fp32, then angle = pos · inv_freq in fp32.
            let invFreq = Float(1.0 / pow(Double(theta), Double(2 * i) / Double(headDim)))
            for p in 0..<maxPositions {
                let angle = Float(p) * invFreq
                c[p * half + i] = Foundation.cos(angle)
                s[p * half + i] = Foundation.sin(angle)
            }
        }
        cos = c; sin = s
    }
    public var maxPositions: Int { cos.count / (headDim / 2) }
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
