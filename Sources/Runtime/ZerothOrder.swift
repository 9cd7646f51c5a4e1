// Zeroth-order training (MeZO's two-point SPSA): no backward pass, no activations kept
// for one, no optimizer state. Step t perturbs every weight by +ε·z, measures the loss,
// moves to −ε·z, measures again, restores, and takes g = (L₊ − L₋) / 2ε as the
// gradient's projection on z: the update is SGD's with gradient g·z, applied as z is
// drawn again, so the model needs no gradient buffer: 4 bytes per parameter in all.
//
// z is never stored: it is regenerated from (seed, step, tensor name, element index),
// so it does not depend on the thread count, on which units are in memory, or on the
// order anything is visited in. The generator, exactly (an independent NumPy version
// reproduces it bit for bit: scripts/fixtures/make_zo_fixtures.py):
//
//   splitmix64(x): x += 0x9E3779B97F4A7C15; x = (x ^ x>>30)·0xBF58476D1CE4E5B9;
//                  x = (x ^ x>>27)·0x94D049BB133111EB; return x ^ x>>31   (mod 2⁶⁴)
//   name(tensor):  FNV-1a 64 of the tensor's GGUF name in UTF-8
//   key:           splitmix64(seed ^ splitmix64(step)) ^ name(tensor)
//   element j:     x = splitmix64(key ^ j); u_k = ((x >> 16k) & 0xFFFF + 0.5) / 65536, k = 0…3
//                  z = ((u₀ + u₁ + u₂ + u₃) − 2) · 1.7320508 (float32 √3)
//
// in float32: the u_k and their sum are exact, the product rounds once. z has mean 0 and
// variance 1 (an Irwin–Hall sum of four uniforms: near-Gaussian, within ±2√3). Element
// j counts in the GGUF tensor's own element order (Q/K rows as the file stores them).

internal import CKernels
import Foundation
import Kernels
import Models
import Tensors

public enum ZerothOrder {
    static func splitmix64(_ v: UInt64) -> UInt64 {
        var x = v &+ 0x9E37_79B9_7F4A_7C15
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        return x ^ (x >> 31)
    }

    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    static func key(seed: UInt64, step: Int, tensor: String) -> UInt64 {
        splitmix64(seed ^ splitmix64(UInt64(step))) ^ fnv1a(tensor)
    }

    /// z of elements `range` of `tensor` at `step`, as training draws it (the SIMD kernel `ck_zo_apply`).
    public static func z(seed: UInt64, step: Int, tensor: String, range: Range<Int>) -> [Float] {
        let k = key(seed: seed, step: step, tensor: tensor)
        var out = [Float](repeating: 0, count: range.count)
        out.withUnsafeMutableBufferPointer { ck_zo_apply($0.baseAddress!, k, Int64(range.lowerBound), Int64(range.count), 1, 0, 0, 1) }
        return out
    }

    /// Calls `body(pointer, key, count)` for every parameter tensor of `model`'s weights, split across
    /// the training threads.
    static func forEachTensor(_ model: TrainableLlama, seed: UInt64, step: Int,
                              _ body: @escaping @Sendable (UnsafeMutablePointer<Float>, UInt64, Range<Int>) -> Void) {
        let base = model.weights.base
        for e in model.layout.entries {
            let k = key(seed: seed, step: step, tensor: e.name), p = base + e.offset
            TrainingThreads.forEachRange(e.elements, minPerThread: 1 << 14) { r in body(p, k, r) }
        }
    }

    /// w += scale · (ε·z) for every weight (scale 1 or −2: exact multiples of one rounded ε·z).
    static func perturb(_ model: TrainableLlama, seed: UInt64, step: Int, eps: Float, scale: Float) {
        forEachTensor(model, seed: seed, step: step) { p, k, r in
            ck_zo_apply(p + r.lowerBound, k, Int64(r.lowerBound), Int64(r.count), eps, scale, 0, 0)
        }
    }

    /// One step: the loss at w + εz (returned as the step's loss), the projected gradient
    /// g = (L₊ − L₋) / 2ε, then w −= lr · (g·z + weightDecay · w), SGD's update with the estimate g·z,
    /// computed as z is drawn (no gradient buffer: the model may hold none). The weights come back
    /// from the perturbations up to rounding (+εz, −2εz, +εz), as MeZO's do.
    public static func step(_ model: TrainableLlama, trainer: LlamaTrainer, inputs: [Int], targets: [Int],
                            seed: UInt64, step: Int, eps: Float, lr: Float, weightDecay: Float,
                            combine: ((plus: Float, minus: Float)) -> (plus: Float, minus: Float) = { $0 })
        throws -> (loss: Float, projected: Float) {
        perturb(model, seed: seed, step: step, eps: eps, scale: 1)
        let plusHere = try trainer.loss(inputs: inputs, targets: targets)
        perturb(model, seed: seed, step: step, eps: eps, scale: -2)
        let minusHere = try trainer.loss(inputs: inputs, targets: targets)
        perturb(model, seed: seed, step: step, eps: eps, scale: 1)
        // Data-parallel ranks exchange these two numbers and nothing else (DistZO2): every rank then
        // applies the same g·z.
        let (plus, minus) = combine((plusHere, minusHere))
        let g = (plus - minus) / (2 * eps)
        guard plus.isFinite, minus.isFinite, g.isFinite else {
            throw TrainingStopped(step: step, loss: plus.isFinite ? minus : plus, gradNorm: Double(g))
        }
        forEachTensor(model, seed: seed, step: step) { p, k, r in
            ck_zo_apply(p + r.lowerBound, k, Int64(r.lowerBound), Int64(r.count), g, lr, weightDecay, 2)
        }
        return (plus, g)
    }
}
