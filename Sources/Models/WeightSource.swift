// Where a model's parameters come from: a GGUF file, a Hugging Face checkpoint,
// or fresh random initialisation. The model asks for tensors by their GGUF name
// and gets them in the file's own type and layout; `ropeStyle` says which RoPE
// convention the Q and K rows follow (GGUF files permute them for adjacent pairs).

import Foundation
import Formats
import Kernels
import Tensors

/// A tensor's bytes as a file holds them. `shape` is row-major, outermost first.
public struct StoredTensor {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public var bytes: UnsafeRawBufferPointer
    public var elements: Int { shape.reduce(1, *) }
    public init(name: String, dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.bytes = bytes
    }
}

public protocol WeightSource: AnyObject {
    var config: LlamaConfig { get }
    var ropeStyle: RopeStyle { get }
    /// A description for messages ("SmolLM2-135M-Instruct.Q4_1.gguf").
    var sourceName: String { get }
    /// The tensor named `name` (GGUF naming). Valid while the source lives.
    func tensor(_ name: String) throws -> StoredTensor
    /// Drops the mapped file's pages read so far from this process's resident memory; bytes read
    /// after this are the same (mapped back from the page cache), so it is only a matter of cost.
    func dropResidentPages()
    /// A small tensor (a norm) as fp32, copied out without mapping the file's pages into this process.
    func vector(_ name: String) throws -> [Float]
}

extension WeightSource {
    public func dropResidentPages() {}

    public func vector(_ name: String) throws -> [Float] {
        let t = try tensor(name)
        return Dequantize.toF32(t.dtype, t.bytes, count: t.elements)
    }

    /// The config's parameter table as this source names them: a mixture of experts' in the layout
    /// the file has (merged, fused gate and up, or one tensor per expert).
    public func storedParameterTable() throws -> [ParameterSpec] {
        let specs = config.parameterTable
        guard config.moe != nil else { return specs }
        let layouts = try (0..<config.layers).map { try MoELayout(self, layer: $0) }
        return specs.flatMap { spec -> [ParameterSpec] in
            let parts = spec.name.split(separator: ".")
            guard parts.count == 4, let l = Int(parts[1]), parts[2].hasSuffix("_exps") else { return [spec] }
            guard parts[2] == "ffn_down_exps" else { return [] }
            return MoELayout.specs(config, layer: l, layout: layouts[l])
        }
    }

    /// Checks that every parameter the config describes is present with the expected shape.
    public func validateTensors() throws {
        for spec in try storedParameterTable() {
            let t = try tensor(spec.name)
            // The shared expert's gate: a vector in GGUF, a [1, dim] matrix in Hugging Face checkpoints.
            if spec.name.hasSuffix("ffn_gate_inp_shexp.weight"), t.shape == [1] + spec.shape { continue }
            guard t.shape == spec.shape else {
                throw OffloadError("[model] \(sourceName): tensor \(spec.name) has shape \(t.shape), expected \(spec.shape)")
            }
        }
    }
}

/// Weights read from a memory-mapped GGUF file.
public final class GGUFWeights: WeightSource {
    public let file: GGUFFile
    public let config: LlamaConfig
    public var ropeStyle: RopeStyle { config.architecture.ggufRopeStyle }
    public var sourceName: String { file.fileName }

    public init(path: String) throws {
        file = try GGUFFile(path: path)
        config = try LlamaConfig(gguf: file)
        try validateTensors()
    }

    public func tensor(_ name: String) throws -> StoredTensor {
        let (info, dtype, bytes) = try file.data(name)
        return StoredTensor(name: name, dtype: dtype, shape: info.shape, bytes: bytes)
    }

    public func dropResidentPages() { file.dropResidentPages() }

    public func vector(_ name: String) throws -> [Float] {
        let (info, dtype, bytes) = try file.copy(name)
        return bytes.withUnsafeBytes { Dequantize.toF32(dtype, $0, count: info.shape.reduce(1, *)) }
    }
}

extension LlamaConfig {
    /// Reads the architecture from GGUF metadata (`general.architecture` = llama).
    public init(gguf f: GGUFFile) throws {
        let ctx = "[gguf] \(f.fileName)"
        let archName = f.string("general.architecture") ?? "?"
        guard let arch = ModelArchitecture(rawValue: archName) else {
            throw OffloadError("\(ctx): architecture '\(archName)' is not supported; supported: "
                               + ModelArchitecture.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let p = archName + "."   // every hyperparameter key is prefixed by the architecture
        func req(_ key: String) throws -> Int {
            guard let v = f.int(p + key), v > 0 else {
                throw OffloadError("\(ctx): metadata \(p)\(key) is missing or not a positive integer")
            }
            return v
        }
        let dim = try req("embedding_length")
        let heads = try req("attention.head_count")
        let vocab = f.int(p + "vocab_size") ?? f.metadata["tokenizer.ggml.tokens"]?.array?.count
            ?? f.info("token_embd.weight")?.shape.first ?? 0
        let tied = f.info("output.weight") == nil
        let headDim = f.int(p + "attention.key_length") ?? f.int(p + "rope.dimension_count") ?? dim / heads
        var context = f.int(p + "context_length") ?? 2048
        // Sliding-window attention (Mistral) equals full attention up to the window: the context stops there.
        if let window = f.int(p + "attention.sliding_window"), window > 0 { context = min(context, window) }
        self.init(name: f.string("general.name") ?? f.fileName, architecture: arch,
                  vocabSize: vocab, dim: dim, ffnDim: try req("feed_forward_length"),
                  layers: try req("block_count"), heads: heads,
                  kvHeads: f.int(p + "attention.head_count_kv") ?? heads,
                  headDim: headDim,
                  ropeTheta: Float(f.double(p + "rope.freq_base") ?? 10000),
                  rmsEps: Float(f.double(p + "attention.layer_norm_rms_epsilon") ?? 1e-5),
                  contextLength: context, tiedEmbeddings: tied,
                  ropeScaling: try Self.ropeScaling(f, prefix: p, headDim: headDim, ctx: ctx))
        if arch == .gemma3 {
            // Gemma 3: the window is local layers' own; it does not cap the context as it does elsewhere.
            contextLength = f.int(p + "context_length") ?? 2048
            if let window = f.int(p + "attention.sliding_window"), window > 0 {
                let key = p + "attention.sliding_window_pattern"
                guard f.metadata[key] == nil || f.int(key) != nil else {
                    throw OffloadError("\(ctx): \(key) is not a number; a per-layer pattern is not supported")
                }
                let pattern = f.int(key) ?? 6
                slidingWindow = (window, pattern, Float(f.double(p + "rope.freq_base_swa") ?? 10000))
            }
            finalLogitSoftcap = f.double(p + "final_logit_softcapping").map(Float.init).flatMap { $0 > 0 ? $0 : nil }
        }
        moe = try Self.moe(f, prefix: p, architecture: arch, ctx: ctx)
        if moe != nil, let e = f.int(p + "expert_feed_forward_length"), e > 0 { ffnDim = e }
        try validate()
    }

    /// Writes the `llama.*` keys `init(gguf:)` reads (architecture, name and file type too), and
    /// adds `rope_freqs.weight` for per-frequency RoPE scaling, as convert_hf_to_gguf does.
    public func writeGGUF(fileType: Int, into w: inout GGUFWriter) throws {
        guard architecture != .gemma3 else {
            throw OffloadError("[export] \(name): writing gemma3 models is not supported yet")
        }
        let p = architecture.rawValue + "."
        func u32(_ key: String, _ v: Int) { w.set(p + key, .uint(UInt64(v), .uint32)) }
        func f32(_ key: String, _ v: Float) { w.set(p + key, .float(Double(v), .float32)) }
        w.set("general.architecture", .string(architecture.rawValue))
        w.set("general.name", .string(name))
        w.set("general.file_type", .uint(UInt64(fileType), .uint32))
        u32("vocab_size", vocabSize)
        u32("context_length", contextLength)
        u32("embedding_length", dim)
        u32("block_count", layers)
        u32("feed_forward_length", ffnDim)
        u32("rope.dimension_count", headDim)
        u32("attention.key_length", headDim)
        u32("attention.value_length", headDim)
        u32("attention.head_count", heads)
        u32("attention.head_count_kv", kvHeads)
        f32("rope.freq_base", ropeTheta)
        f32("attention.layer_norm_rms_epsilon", rmsEps)
        if let m = moe {   // the keys `moe(_:prefix:architecture:ctx:)` reads back
            u32("expert_count", m.experts)
            u32("expert_used_count", m.used)
            if architecture != .llama { u32("expert_feed_forward_length", ffnDim) }
            if let s = m.sharedFFNDim { u32("expert_shared_feed_forward_length", s) }
        }
        switch ropeScaling {
        case nil: break
        case .linear(let factor)?:
            w.set(p + "rope.scaling.type", .string("linear"))
            f32("rope.scaling.factor", factor)
        case let s?:
            let divisors = s.divisors(for: RopeTable.inverseFrequencies(headDim: headDim, theta: ropeTheta))
            w.tensors.append(.init(name: "rope_freqs.weight", dtype: .f32, shape: [divisors.count],
                                   data: divisors.withUnsafeBytes { Data($0) }))
        }
    }

    /// The mixture-of-experts keys (`expert_count`, `expert_used_count`, the shared expert's size),
    /// with the routing llama.cpp runs for the architecture: Mixtral (`llama`) and Qwen3-MoE
    /// renormalize the chosen weights, Qwen2-MoE and OLMoE do not. Routing options this engine does not run are
    /// refused by key.
    static func moe(_ f: GGUFFile, prefix p: String, architecture: ModelArchitecture, ctx: String) throws -> MoEConfig? {
        let count = f.int(p + "expert_count") ?? 0
        guard count > 0 else {
            if [.qwen2moe, .olmoe, .qwen3moe].contains(architecture) {
                throw OffloadError("\(ctx): metadata \(p)expert_count is missing; a \(architecture.rawValue) model has experts")
            }
            return nil
        }
        guard [.llama, .qwen2moe, .olmoe, .qwen3moe].contains(architecture) else {
            throw OffloadError("\(ctx): \(p)expert_count is \(count); experts are supported for llama (Mixtral), qwen2moe, "
                               + "olmoe and qwen3moe")
        }
        guard let used = f.int(p + "expert_used_count"), used > 0 else {
            throw OffloadError("\(ctx): metadata \(p)expert_used_count is missing or not a positive integer")
        }
        guard used <= count else {
            throw OffloadError("\(ctx): metadata \(p)expert_used_count (\(used)) is above \(p)expert_count (\(count))")
        }
        // Routing variants of other MoE families (DeepSeek, Llama 4, GLM…): refused, not ignored.
        if let g = f.int(p + "expert_gating_func"), g != 1 {
            throw OffloadError("\(ctx): metadata \(p)expert_gating_func is \(g); only softmax gating (1) is supported")
        }
        if let s = f.double(p + "expert_weights_scale"), s != 0, s != 1 {
            throw OffloadError("\(ctx): metadata \(p)expert_weights_scale is \(s); only 1 is supported")
        }
        for key in ["leading_dense_block_count", "expert_group_count", "expert_group_used_count"] {
            if let v = f.int(p + key), v > 0 {
                throw OffloadError("\(ctx): metadata \(p)\(key) is \(v); dense leading blocks and expert groups are not supported")
            }
        }
        let normalize = architecture == .llama || architecture == .qwen3moe
        if let n = f.bool(p + "expert_weights_norm"), n != normalize {
            throw OffloadError("\(ctx): metadata \(p)expert_weights_norm is \(n); \(architecture.rawValue) routing "
                               + (normalize ? "renormalizes" : "does not renormalize") + " the chosen experts' weights")
        }
        var shared: Int?
        if architecture == .qwen2moe {
            guard let s = f.int(p + "expert_shared_feed_forward_length"), s > 0 else {
                throw OffloadError("\(ctx): metadata \(p)expert_shared_feed_forward_length is missing (Qwen2-MoE's shared expert)")
            }
            shared = s
        } else if let n = f.int(p + "expert_shared_count"), n > 0 {
            throw OffloadError("\(ctx): metadata \(p)expert_shared_count is \(n); shared experts are supported for qwen2moe only")
        }
        return MoEConfig(experts: count, used: used, normalizeTopK: normalize, sharedFFNDim: shared)
    }

    /// RoPE scaling as llama.cpp reads it: `llama.rope.scaling.type` (none or linear with
    /// `llama.rope.scaling.factor`), or per-frequency divisors in the `rope_freqs.weight` tensor
    /// (how convert_hf_to_gguf stores Llama 3.1's scaling).
    static func ropeScaling(_ f: GGUFFile, prefix p: String, headDim: Int, ctx: String) throws -> RopeScaling? {
        let type = f.string(p + "rope.scaling.type") ?? "none"
        var scaling: RopeScaling?
        switch type {
        case "none": break
        case "linear":
            guard let factor = f.double(p + "rope.scaling.factor"), factor > 0 else {
                throw OffloadError("\(ctx): \(p)rope.scaling.type is linear but \(p)rope.scaling.factor "
                                   + "is missing or not positive")
            }
            if factor != 1 { scaling = .linear(factor: Float(factor)) }
        default:
            throw OffloadError("\(ctx): RoPE scaling type '\(type)' (\(p)rope.scaling.type) is not supported; "
                               + "supported: none, linear, and per-frequency factors (rope_freqs.weight)")
        }
        if f.info("rope_freqs.weight") != nil {
            guard scaling == nil else {
                throw OffloadError("\(ctx): both linear RoPE scaling and rope_freqs.weight; expected one of them")
            }
            let (info, dtype, bytes) = try f.data("rope_freqs.weight")
            guard dtype == .f32, info.elements == headDim / 2 else {
                throw OffloadError("\(ctx): rope_freqs.weight is \(dtype) \(info.shape), expected f32 [\(headDim / 2)]")
            }
            scaling = .divisors(Array(bytes.bindMemory(to: Float.self)))
        }
        return scaling
    }
}
