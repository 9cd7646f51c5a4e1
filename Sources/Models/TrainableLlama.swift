// A Llama-family model's parameters in fp32 for training: weights and gradients
// each carved from ONE allocation by the parameter table (stage by stage, so a
// planner can move one stage's parameters as a block). Built from any
// WeightSource (dequantized) or randomly initialised. The forward/backward
// over a batch lives in LlamaTrainer; the optimizer's state in Runtime.

import Foundation
import Kernels
import Tensors

/// One 64-byte-aligned, zero-filled allocation of `count` floats.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let base: UnsafeMutablePointer<Float>
    /// The buffer this one is a window of (kept alive by it); nil when this one owns its memory.
    private let owner: FloatBuffer?

    public init(count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
        owner = nil
    }

    /// Floats `range` of `buffer`, without a copy.
    public init(window range: Range<Int>, of buffer: FloatBuffer) {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count)
        count = range.count; base = buffer.base + range.lowerBound; owner = buffer
    }
    deinit { if owner == nil { base.deallocate() } }

    public var bytes: Int { count * 4 }
    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: base, count: count) }
    public func zero() { base.update(repeating: 0, count: count) }
}

/// Where each parameter sits in a role's allocation. Offsets are rounded up to
/// 16 floats (64 bytes) so every tensor starts on a cache line; a stage's
/// parameters are contiguous.
public struct ParameterLayout: Sendable {
    public struct Entry: Sendable {
        public var spec: ParameterSpec
        public var stage: ParameterStage
        public var offset: Int
        public var name: String { spec.name }
        public var elements: Int { spec.elements }
    }
    public let entries: [Entry]
    /// Floats in one role's allocation (with alignment padding).
    public let totalFloats: Int
    private let index: [String: Int]

    public init(config: LlamaConfig) {
        self.init(config.stages.flatMap { stage in config.parameters(of: stage).map { ($0, stage) } })
    }

    /// A layout of `specs` in the order given (a stage's parameters must be adjacent).
    public init(_ specs: [(ParameterSpec, ParameterStage)]) {
        var entries: [Entry] = [], offset = 0
        for (spec, stage) in specs {
            entries.append(Entry(spec: spec, stage: stage, offset: offset))
            offset += (spec.elements + 15) / 16 * 16
        }
        self.entries = entries
        totalFloats = offset
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.spec.name, $0) })
    }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// The floats [start, end) a stage's parameters occupy in every role's allocation.
    public func range(of stage: ParameterStage) -> Range<Int> {
        let mine = entries.filter { $0.stage == stage }
        guard let first = mine.first, let last = mine.last else { return 0..<0 }
        return first.offset ..< last.offset + (last.elements + 15) / 16 * 16
    }
}

public final class TrainableLlama {
    public let config: LlamaConfig
    /// The RoPE convention the Q and K rows follow (GGUF files: adjacent pairs).
    public let ropeStyle: RopeStyle
    public let layout: ParameterLayout
    public let weights: FloatBuffer
    public let gradients: FloatBuffer

    /// A model with all weights zero (fill them, or use `random`/`init(source:)`).
    /// - Parameters:
    ///   - resident: false gives a model that holds no weights or gradients (both buffers
    ///     empty): its parameters live elsewhere (a streamed trainer's disk store) and every call
    ///     that touches them passes `ParameterBases`.
    ///   - gradients: false holds weights only (training without a backward pass: zero-order steps,
    ///     losses); nothing may then compute gradients into it.
    public init(config: LlamaConfig, ropeStyle: RopeStyle = .adjacentPairs, resident: Bool = true,
                gradients: Bool = true) throws {
        try config.validate()
        try config.requireDense(for: "training")
        guard config.architecture == .llama else {
            let what = config.architecture == .qwen2 ? "q/k/v biases" : "per-head q/k norms, post-norms, GELU"
            throw OffloadError("[train] \(config.name): training \(config.architecture.rawValue) models (\(what) have no "
                               + "backward pass yet) is not supported; generate and evaluate them")
        }
        self.config = config
        self.ropeStyle = ropeStyle
        layout = ParameterLayout(config: config)
        weights = FloatBuffer(count: resident ? layout.totalFloats : 0)
        self.gradients = FloatBuffer(count: resident && gradients ? layout.totalFloats : 0)
    }

    /// Whether the model has a gradient for every weight.
    public var hasGradients: Bool { gradients.count == layout.totalFloats }

    /// Whether the weights and gradients are in this object's own allocations.
    public var isResident: Bool { weights.count == layout.totalFloats }

    /// Every weight of `source` dequantized to fp32 (`gradients`: as `init(config:)`).
    public convenience init(source: WeightSource, gradients: Bool = true) throws {
        try self.init(config: source.config, ropeStyle: source.ropeStyle, gradients: gradients)
        try source.validateTensors()
        for e in layout.entries { try Self.load(e, from: source, into: weights.base + e.offset) }
    }

    /// Elements `range` (default all) of parameter `e` of `source`, dequantized to fp32 into `p`.
    /// A range must start and end on whole quantization blocks (multiples of 256 elements always are).
    public static func load(_ e: ParameterLayout.Entry, from source: WeightSource, elements range: Range<Int>? = nil,
                            into p: UnsafeMutablePointer<Float>) throws {
        let t = try source.tensor(e.name), r = range ?? 0..<e.elements
        guard t.dtype.byteCount(elements: e.elements) == t.bytes.count else {
            throw OffloadError("[train] \(source.sourceName): tensor \(e.name) holds \(t.bytes.count) bytes, "
                               + "not \(e.elements) \(t.dtype) values")
        }
        guard r.upperBound <= e.elements, let skip = t.dtype.byteCount(elements: r.lowerBound),
              t.dtype.byteCount(elements: r.count) != nil else {
            throw OffloadError("[train] \(source.sourceName): elements \(r) of \(e.name) are not whole \(t.dtype) blocks")
        }
        Dequantize.toF32(t.dtype, t.bytes.baseAddress! + skip, p, count: r.count)
    }

    /// Fresh weights: matrices ~ N(0, 0.02²) (output projections scaled by 1/√(2·layers), as GPT-2),
    /// norm weights 1. The same seed gives the same weights on every machine.
    public static func random(config: LlamaConfig, seed: UInt64, gradients: Bool = true) throws -> TrainableLlama {
        let m = try TrainableLlama(config: config, ropeStyle: .adjacentPairs, gradients: gradients)
        var rng = SeededGenerator(seed: seed)
        for e in m.layout.entries { randomFill(e, config: config, into: m.weights.base + e.offset, rng: &rng) }
        return m
    }

    /// Parameter `e`'s fresh weights as `random` draws them; called for every entry in table order
    /// with one generator, it gives `random`'s weights without holding them all.
    /// Elements `range` (default all) into `p`; ranges of one entry must be filled in order.
    public static func randomFill(_ e: ParameterLayout.Entry, config: LlamaConfig, elements range: Range<Int>? = nil,
                                  into p: UnsafeMutablePointer<Float>, rng: inout SeededGenerator) {
        let count = (range ?? 0..<e.elements).count
        if e.spec.shape.count == 1 {
            p.update(repeating: 1, count: count)
            return
        }
        let isResidualOutput = e.name.hasSuffix("attn_output.weight") || e.name.hasSuffix("ffn_down.weight")
        let std: Float = 0.02 * (isResidualOutput ? 1 / Float(2 * config.layers).squareRoot() : 1)
        for i in 0..<count { p[i] = rng.normal() * std }
    }

    public var parameterCount: Int { layout.entries.reduce(0) { $0 + $1.elements } }

    /// The weights of parameter `name` (GGUF naming).
    public func weight(_ name: String) throws -> UnsafeMutableBufferPointer<Float> {
        guard let e = layout.entry(name) else { throw OffloadError("[train] no parameter named \(name)") }
        return .init(start: weights.base + e.offset, count: e.elements)
    }

    /// The gradient of parameter `name`.
    public func gradient(_ name: String) throws -> UnsafeMutableBufferPointer<Float> {
        guard let e = layout.entry(name) else { throw OffloadError("[train] no parameter named \(name)") }
        return .init(start: gradients.base + e.offset, count: e.elements)
    }


    /// The model's own allocations as parameter bases.
    public var resident: ParameterBases { ParameterBases(weights: weights.base, gradients: gradients.base) }

    /// Pointers to block `l`'s nine parameters in `base` (weights or gradients).
    func block(_ l: Int, in base: UnsafeMutablePointer<Float>) -> BlockParameters {
        func p(_ suffix: String) -> UnsafeMutablePointer<Float> { base + layout.entry("blk.\(l).\(suffix)")!.offset }
        return BlockParameters(attnNorm: p("attn_norm.weight"), q: p("attn_q.weight"), k: p("attn_k.weight"),
                               v: p("attn_v.weight"), o: p("attn_output.weight"), ffnNorm: p("ffn_norm.weight"),
                               gate: p("ffn_gate.weight"), up: p("ffn_up.weight"), down: p("ffn_down.weight"))
    }

    func pointer(_ name: String, in base: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        base + layout.entry(name)!.offset
    }
}

/// Where a stage's parameters are: `weights + offset` (and `gradients + offset`) is the parameter
/// at that layout offset. For the model's own allocations these are their bases; a stage streamed
/// into a buffer of its own passes `buffer - (first offset of the stage)`, so the same layout
/// offsets address it (the bases themselves may point before the buffer and are never read).
public struct ParameterBases {
    public var weights: UnsafeMutablePointer<Float>
    public var gradients: UnsafeMutablePointer<Float>
    public init(weights: UnsafeMutablePointer<Float>, gradients: UnsafeMutablePointer<Float>) {
        self.weights = weights; self.gradients = gradients
    }
    /// Bases for a stage whose first parameter is at layout offset `start`, held at `weights` / `gradients`.
    public init(stageStart start: Int, weights: UnsafeMutablePointer<Float>, gradients: UnsafeMutablePointer<Float>) {
        self.weights = weights - start; self.gradients = gradients - start
    }
}

/// One block's parameters (weights or gradients), shapes as in `LlamaConfig.blockParameters`.
struct BlockParameters {
    var attnNorm, q, k, v, o, ffnNorm, gate, up, down: UnsafeMutablePointer<Float>
}



/// A TrainableLlama's current fp32 weights as a WeightSource, so the inference
/// model (and the GGUF exporter) can read a model being trained without a file.
public final class TrainableWeights: WeightSource {
    public let model: TrainableLlama
    public init(_ model: TrainableLlama) { self.model = model }
    public var config: LlamaConfig { model.config }
    public var ropeStyle: RopeStyle { model.ropeStyle }
    public var sourceName: String { "\(model.config.name) (in training)" }
    public func tensor(_ name: String) throws -> StoredTensor {
        guard let e = model.layout.entry(name) else {
            throw OffloadError("[train] \(sourceName): no tensor named \(name)")
        }
        return StoredTensor(name: name, dtype: .f32, shape: e.spec.shape,
                            bytes: UnsafeRawBufferPointer(start: model.weights.base + e.offset, count: e.elements * 4))
    }
}
