// Optimizers behind one small protocol. Each says what state a parameter needs as
// named, sized buffers (AdamW: m and v in fp32; 8-bit AdamW: byte codes and block
// scales; SGD: momentum or nothing), so checkpoints and the planner count and move
// them without knowing the method. PyTorch semantics, so
// runs can be compared step by step with torch.optim. Also: global-norm
// clipping and learning-rate schedules. Not here: the training loop.

import Foundation
import Kernels
import Models
import Tensors

/// How an optimizer-state buffer stores its values.
public enum StateElement: String, Codable, Sendable {
    case f32 = "F32", u8 = "U8"
    public var size: Int { self == .f32 ? 4 : 1 }
}

/// One named optimizer-state buffer of one parameter: AdamW's "m" (fp32, one per weight), 8-bit AdamW's
/// "m.codes" (a byte per weight) and "m.scales" (an fp32 per block of 256 weights), ...
public struct StateBuffer: Equatable, Sendable {
    public var name: String
    public var element: StateElement
    public var count: Int
    /// Shaped like the parameter (one value per weight); otherwise a flat vector.
    public var perWeight: Bool
    public init(_ name: String, _ element: StateElement, count: Int, perWeight: Bool) {
        self.name = name; self.element = element; self.count = count; self.perWeight = perWeight
    }
    public var bytes: Int { count * element.size }
}

public protocol Optimizer: Sendable {
    /// "adamw", "adamw8bit", "sgd": the name checkpoints record.
    var name: String { get }
    /// The state one parameter of `count` weights needs, as named, sized buffers (none for SGD without momentum).
    func stateBuffers(count: Int) -> [StateBuffer]
    /// A piece of an update starts at a multiple of this many weights (8-bit AdamW: its block of 256).
    var granularity: Int { get }
    /// Updates weights `range` of one parameter of `count` weights in place. `state[i]` is the start of the
    /// parameter's buffer `stateBuffers(count: count)[i]`; `step` counts updates from 1. Pieces of one parameter
    /// (ranges starting at multiples of `granularity`) may run on different threads.
    func update(_ p: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                count: Int, range: Range<Int>, lr: Float, step: Int)
    /// The same, with `range` and the state in the reference's order of the weights (`order`; nil: as stored).
    /// Only updates that group weights (8-bit AdamW's blocks) differ from the plain one.
    func update(_ p: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                count: Int, range: Range<Int>, lr: Float, step: Int, order: ReferenceOrder?)
}

extension Optimizer {
    public var granularity: Int { 1 }
    public func update(_ p: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                       count: Int, range: Range<Int>, lr: Float, step: Int, order: ReferenceOrder?) {
        update(p, gradient: gradient, state: state, count: count, range: range, lr: lr, step: step)
    }
    /// State bytes per weight of a parameter of `count` weights.
    public func stateBytes(count: Int) -> Int { stateBuffers(count: count).reduce(0) { $0 + $1.bytes } }
}

/// The state of an optimizer for every parameter of a model: each parameter's buffers (`Optimizer.stateBuffers`)
/// carved from one zeroed allocation, 64-byte aligned, in parameter order.
public final class OptimizerState {
    public struct Slot {
        public let buffer: StateBuffer
        /// Byte offset in the allocation.
        public let offset: Int
    }
    public let layout: ParameterLayout
    /// `slots[i]`: the buffers of `layout.entries[i]`.
    public let slots: [[Slot]]
    public let bytes: Int
    private let storage: UnsafeMutableRawPointer
    /// Updates done so far.
    public var step = 0

    public init(for optimizer: any Optimizer, layout: ParameterLayout) {
        self.layout = layout
        var offset = 0
        slots = layout.entries.map { e in
            optimizer.stateBuffers(count: e.elements).map { b in
                defer { offset += (b.bytes + 63) / 64 * 64 }
                return Slot(buffer: b, offset: offset)
            }
        }
        bytes = offset
        storage = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 64))
    }
    deinit { storage.deallocate() }

    /// The allocation: every parameter's buffers in layout order (what a ZeRO shard's state is a part of).
    public var base: UnsafeMutableRawPointer { storage }

    /// Parameter `index`'s buffers, in `stateBuffers` order (new state is zero).
    public func state(of index: Int) -> [UnsafeMutableRawPointer] { slots[index].map { storage + $0.offset } }

    /// The per-weight fp32 buffer `name` of every parameter, concatenated in layout order (AdamW's m as if
    /// laid out like the weights); nil when a parameter has no such buffer.
    public func gathered(_ name: String) -> [Float]? {
        var out: [Float] = []
        out.reserveCapacity(layout.totalFloats)
        for (i, e) in layout.entries.enumerated() {
            guard let slot = slots[i].first(where: { $0.buffer.name == name && $0.buffer.element == .f32 && $0.buffer.perWeight })
            else { return nil }
            out.append(contentsOf: UnsafeBufferPointer(start: (storage + slot.offset).assumingMemoryBound(to: Float.self), count: e.elements))
        }
        return out
    }

    /// Every buffer as (parameter index, slot, address), buffer name by buffer name in the order names
    /// first appear (AdamW: every m, then every v), the order checkpoints write them in.
    public var buffersByName: [(entry: Int, slot: Slot, address: UnsafeMutableRawPointer)] {
        var names: [String] = []
        for s in slots.joined() where !names.contains(s.buffer.name) { names.append(s.buffer.name) }
        return names.flatMap { name in
            slots.indices.flatMap { i in
                slots[i].filter { $0.buffer.name == name }.map { (i, $0, storage + $0.offset) }
            }
        }
    }
}

extension Optimizer {
    /// One step over every parameter of `model` (a model, or LoRA adapters) from its gradients.
    public func step(_ model: some TrainableParameters, state: OptimizerState, lr: Float) {
        state.step += 1
        let step = state.step, unit = granularity
        for (i, e) in model.layout.entries.enumerated() {
            let s = state.state(of: i), order = model.referenceOrder(of: e)
            let w = model.weights.base + e.offset, g = model.gradients.base + e.offset
            // Elementwise (blockwise for 8-bit state): split across threads in whole granules,
            // the same values whatever the split.
            let granules = (e.elements + unit - 1) / unit
            TrainingThreads.forEachRange(granules, minPerThread: max(1, (1 << 15) / unit)) { r in
                update(w, gradient: g, state: s, count: e.elements,
                       range: r.lowerBound * unit..<min(r.upperBound * unit, e.elements), lr: lr, step: step, order: order)
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
    public func stateBuffers(count: Int) -> [StateBuffer] {
        [StateBuffer("m", .f32, count: count, perWeight: true), StateBuffer("v", .f32, count: count, perWeight: true)]
    }

    public func update(_ p: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                       count: Int, range: Range<Int>, lr: Float, step: Int) {
        let m = state[0].assumingMemoryBound(to: Float.self), v = state[1].assumingMemoryBound(to: Float.self)
        let o = range.lowerBound
        update(p + o, gradient: gradient + o, m: m + o, v: v + o, count: range.count, lr: lr, step: step)
    }

    /// The update of `count` weights with their fp32 moments `m` and `v`.
    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
                       m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int, lr: Float, step: Int) {
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
    public func stateBuffers(count: Int) -> [StateBuffer] {
        momentum != 0 ? [StateBuffer("momentum", .f32, count: count, perWeight: true)] : []
    }

    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                       count: Int, range: Range<Int>, lr: Float, step: Int) {
        let wd = weightDecay, mu = momentum
        if mu == 0 {
            for i in range { p[i] -= lr * (g[i] + wd * p[i]) }
            return
        }
        let b = state[0].assumingMemoryBound(to: Float.self)
        for i in range {
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
