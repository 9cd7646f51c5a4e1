// Dropout on a LoRA adapter's input during training (peft's lora_dropout): element j of
// row i of target t's input in block l is kept when a counter-based uniform u ≥ p, and
// kept values are scaled by 1/(1 − p). The mask is a function of (seed, draw, l, t, i·in + j)
// only — draw = the micro-batch's index in the run — so the backward (and a recomputed
// forward) regenerate it instead of storing it, and a resumed run draws the same masks:
//   splitmix64(x): x += 0x9E3779B97F4A7C15; x = (x ^ x>>30)·0xBF58476D1CE4E5B9;
//                  x = (x ^ x>>27)·0x94D049BB133111EB; x ^ x>>31
//   key = splitmix64(seed ^ splitmix64(draw ^ splitmix64(l·256 + t)))   (t: q=0 … down=6)
//   u   = (splitmix64(key ^ (i·in + j)) >> 40) / 2^24
// Evaluation (the loss without gradients) and inference apply no dropout, as peft in eval mode.

import Kernels

struct DropoutMask {
    let key: UInt64
    /// Kept when the 24-bit draw is at least this (p · 2^24, rounded).
    let threshold: UInt64
    let scale: Float

    init(p: Float, seed: UInt64, draw: UInt64, layer: Int, target: LoRATarget) {
        let t = UInt64(LoRATarget.allCases.firstIndex(of: target)!)
        key = Self.splitmix64(seed ^ Self.splitmix64(draw ^ Self.splitmix64(UInt64(layer) << 8 | t)))
        threshold = UInt64((Double(p) * Double(1 << 24)).rounded())
        scale = Float(1 / (1 - Double(p)))
    }

    @inline(__always) static func splitmix64(_ v: UInt64) -> UInt64 {
        var x = v &+ 0x9E37_79B9_7F4A_7C15
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        return x ^ (x >> 31)
    }

    @inline(__always) func keep(_ index: Int) -> Bool { Self.splitmix64(key ^ UInt64(index)) >> 40 >= threshold }

    /// out[k] = x[k]·scale where kept, else 0, for the n × cols elements (split over the training threads).
    func apply(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, n: Int, cols: Int) {
        TrainingThreads.forEachRange(n, minPerThread: 8) { rows in
            for k in rows.lowerBound * cols ..< rows.upperBound * cols { out[k] = keep(k) ? x[k] * scale : 0 }
        }
    }

    /// dx[k] += g[k]·scale where kept: the gradient through the dropout.
    func addBackward(_ g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>, n: Int, cols: Int) {
        TrainingThreads.forEachRange(n, minPerThread: 8) { rows in
            for k in rows.lowerBound * cols ..< rows.upperBound * cols where keep(k) { dx[k] += g[k] * scale }
        }
    }
}
