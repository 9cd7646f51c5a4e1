// Optimizers behind one small protocol, with per-parameter state carved from one
// allocation per state role (AdamW: m and v, laid out like the weights), so a
// planner can move a stage's optimizer state as a block. PyTorch semantics, so
// runs can be compared step by step with torch.optim. Also: global-norm
// clipping and learning-rate schedules. Not here: the training loop.

import Foundation
import Kernels
import Models
import Tensors

public protocol Optimizer: Sendable {
    /// "adamw", "sgd": the name checkpoints record.
    var name: String { get }
    /// Per-parameter state buffers, each shaped like the parameter (AdamW: m, v).
    var stateNames: [String] { get }
    /// One update of one parameter of `count` floats, in place. `state[i]` is the
    /// buffer named `stateNames[i]`; `step` counts updates from 1.
    func update(_ weights: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>,
                state: [UnsafeMutablePointer<Float>], count: Int, lr: Float, step: Int)
}

/// The state of an optimizer for every parameter of a model: one allocation per
/// state role, laid out like the weights.
public final class OptimizerState {
    public let names: [String]
    public let layout: ParameterLayout
    public let buffers: [FloatBuffer]
    /// Updates done so far.
    public var step = 0

    public init(for optimizer: any Optimizer, layout: ParameterLayout) {
        names = optimizer.stateNames
        self.layout = layout
        buffers = names.map { _ in FloatBuffer(count: layout.totalFloats) }
    }

    /// Parameter `entry`'s state, one pointer per role (new state is zero).
    public func newState(for entry: ParameterLayout.Entry) -> [UnsafeMutablePointer<Float>] {
        buffers.map { $0.base + entry.offset }
    }

    public var bytes: Int { buffers.reduce(0) { $0 + $1.bytes } }
}

extension Optimizer {
    /// One step over every parameter of `model` (a model, or LoRA adapters) from its gradients.
    public func step(_ model: some TrainableParameters, state: OptimizerState, lr: Float) {
        state.step += 1
        for e in model.layout.entries {
            let s = state.newState(for: e)
            let w = model.weights.base + e.offset, g = model.gradients.base + e.offset
            let step = state.step
            // Elementwise: split across threads, the same values whatever the split.
            TrainingThreads.forEachRange(e.elements, minPerThread: 1 << 15) { r in
                update(w + r.lowerBound, gradient: g + r.lowerBound, state: s.map { $0 + r.lowerBound },
                       count: r.count, lr: lr, step: step)
            }
        }
    }
}

/// AdamW as torch.optim.AdamW: decoupled weight decay p ← p·(1 − lr·wd), bias-corrected
/// moments, eps added after the square root: p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps).
public struct AdamW: Optimizer, Codable, Equatable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    public init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
    public var name: String { "adamw" }
    public var stateNames: [String] { ["m", "v"] }

    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
                       state: [UnsafeMutablePointer<Float>], count: Int, lr: Float, step: Int) {
        let m = state[0], v = state[1]
        // Scalars as PyTorch forms them: in double, then used as fp32 by the tensor ops.
        let decay = Float(1 - Double(lr) * Double(weightDecay))
        let bc1 = 1 - Foundation.pow(Double(beta1), Double(step))
        let bc2 = 1 - Foundation.pow(Double(beta2), Double(step))
        let stepSize = Float(Double(lr) / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let w1 = 1 - beta1, w2 = 1 - beta2, b2 = beta2, eps = eps
        // 8 lanes at a time, then the tail: the same IEEE operations per element either way.
        typealias V = SIMD8<Float>
        var i = 0
        while i + 8 <= count {
            let gi = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
            var mi = UnsafeRawPointer(m + i).loadUnaligned(as: V.self)
            var vi = UnsafeRawPointer(v + i).loadUnaligned(as: V.self)
            let pi = UnsafeRawPointer(p + i).loadUnaligned(as: V.self)
            mi = mi + w1 * (gi - mi)
            vi = vi * b2 + w2 * gi * gi
            let denom = vi.squareRoot() / bc2Sqrt + eps
            let pn = pi * decay - stepSize * (mi / denom)
            UnsafeMutableRawPointer(m + i).storeBytes(of: mi, as: V.self)
            UnsafeMutableRawPointer(v + i).storeBytes(of: vi, as: V.self)
            UnsafeMutableRawPointer(p + i).storeBytes(of: pn, as: V.self)
            i += 8
        }
        while i < count {
            let gi = g[i]
            let mi = m[i] + w1 * (gi - m[i])            // exp_avg.lerp_(grad, 1 − β₁)
            let vi = v[i] * b2 + w2 * gi * gi           // exp_avg_sq.mul_(β₂).addcmul_(g, g, 1 − β₂)
            m[i] = mi; v[i] = vi
            let denom = vi.squareRoot() / bc2Sqrt + eps
            p[i] = p[i] * decay - stepSize * (mi / denom)
            i += 1
        }
    }
}

/// SGD with momentum as torch.optim.SGD (dampening 0): g ← g + wd·p (coupled L2 decay),
/// b ← g on the first step, else b ← μ·b + g; p ← p − lr·b.
public struct SGD: Optimizer, Codable, Equatable {
    public var momentum: Float = 0.9
    public var weightDecay: Float = 0
    public init(momentum: Float = 0.9, weightDecay: Float = 0) { self.momentum = momentum; self.weightDecay = weightDecay }
    public var name: String { "sgd" }
    public var stateNames: [String] { momentum != 0 ? ["momentum"] : [] }

    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
                       state: [UnsafeMutablePointer<Float>], count: Int, lr: Float, step: Int) {
        let wd = weightDecay, mu = momentum
        if mu == 0 {
            for i in 0..<count { p[i] -= lr * (g[i] + wd * p[i]) }
            return
        }
        let b = state[0]
        for i in 0..<count {
            let gi = g[i] + wd * p[i]
            let bi = step == 1 ? gi : mu * b[i] + gi
            b[i] = bi
            p[i] -= lr * bi
        }
    }
}

// MARK: - learning-rate schedules

public enum LearningRateSchedule: Codable, Equatable, Sendable {
    case constant
    /// Linear warm-up over `warmup` steps to the base rate, then cosine decay to `minLR` at `total`.
    case warmupCosine(warmup: Int, total: Int, minLR: Float)

    /// The rate for update `step` (0-based).
    public func lr(step: Int, base: Float) -> Float {
        switch self {
        case .constant: return base
        case .warmupCosine(let warmup, let total, let minLR):
            if step < warmup { return base * Float(step + 1) / Float(warmup) }
            let progress = min(1, Double(step - warmup) / Double(max(1, total - warmup)))
            return minLR + (base - minLR) * Float(0.5 * (1 + Foundation.cos(Double.pi * progress)))
        }
    }
}
