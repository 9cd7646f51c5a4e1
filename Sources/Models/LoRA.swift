// LoRA adapters (Hu et al. 2021, as Hugging Face peft builds them): for each
// targeted projection W (out × in) of each block, A (rank × in) and B (out × rank)
// with y = W·x + (alpha / rank)·B·A·x. A starts Kaiming-uniform (bound 1/√in), B
// zero, so training starts from the base model. The adapters are the trained
// parameters (weights and gradients carved from one allocation each, block by
// block); the base stays frozen (FrozenLlama). Read and written in peft's format:
// adapter_config.json and adapter_model.safetensors with peft's tensor names; B's
// rows of q and k are reordered between the file's RoPE convention and Hugging
// Face's, as the base weights are.

import Foundation
import Formats
import Kernels
import Tensors

/// A projection an adapter can target: the flag's name, GGUF's tensor name and peft's module name.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    case q, k, v, o, gate, up, down

    /// The GGUF tensor name's middle part (blk.N.<this>.weight).
    public var ggufName: String {
        switch self {
        case .q: "attn_q"; case .k: "attn_k"; case .v: "attn_v"; case .o: "attn_output"
        case .gate: "ffn_gate"; case .up: "ffn_up"; case .down: "ffn_down"
        }
    }

    /// peft's target_modules name (the Hugging Face module's last name).
    public var peftModule: String { "\(rawValue)_proj" }

    /// The Hugging Face module path inside a block.
    public var hfModule: String { (self == .gate || self == .up || self == .down ? "mlp." : "self_attn.") + peftModule }

    /// (out, in) of the projection.
    public func shape(_ c: LlamaConfig) -> (out: Int, in: Int) {
        switch self {
        case .q: (c.qDim, c.dim); case .k, .v: (c.kvDim, c.dim); case .o: (c.dim, c.qDim)
        case .gate, .up: (c.ffnDim, c.dim); case .down: (c.dim, c.ffnDim)
        }
    }

    /// Targets from a comma-separated list of flag names (q,k,v,o,gate,up,down) or peft module names.
    public static func parse(_ list: String) throws -> [LoRATarget] {
        let names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard !names.isEmpty, !names.contains("") else {
            throw OffloadError("--lora-targets: give a comma-separated list of q, k, v, o, gate, up, down")
        }
        var out: [LoRATarget] = []
        for n in names {
            guard let t = LoRATarget(rawValue: n) ?? allCases.first(where: { $0.peftModule == n }) else {
                throw OffloadError("--lora-targets: '\(n)' is not a projection; use q, k, v, o, gate, up, down")
            }
            if !out.contains(t) { out.append(t) }
        }
        return allCases.filter(out.contains)
    }
}

/// What a LoRA run trains: rank, alpha (scale alpha/rank), the targeted projections, dropout.
public struct LoRASettings: Codable, Equatable, Sendable {
    public var rank: Int
    public var alpha: Float
    public var targets: [LoRATarget]
    public var dropout: Float = 0
    public init(rank: Int, alpha: Float, targets: [LoRATarget], dropout: Float = 0) {
        self.rank = rank; self.alpha = alpha; self.targets = targets; self.dropout = dropout
    }
    /// peft's defaults: rank 8, alpha 8, q and v.
    public static let defaultAlpha: Float = 8
    public static let defaultTargets: [LoRATarget] = [.q, .v]

    public var scale: Float { alpha / Float(rank) }

    public func validate() throws {
        guard rank > 0 else { throw OffloadError("--lora-rank must be positive, got \(rank)") }
        guard alpha.isFinite, alpha > 0 else { throw OffloadError("--lora-alpha must be a positive number, got \(alpha)") }
        guard !targets.isEmpty else { throw OffloadError("--lora-targets: no projection given") }
        guard dropout >= 0 && dropout < 1 else { throw OffloadError("--lora-dropout must be in [0, 1), got \(dropout)") }
    }
}

public final class LoRAAdapters {
    public let config: LlamaConfig
    /// The RoPE convention of the base's Q and K rows (B's rows of q and k follow it).
    public let ropeStyle: RopeStyle
    public let settings: LoRASettings
    /// blk.N.<target>.lora_a (rank × in) then .lora_b (out × rank), block by block.
    public let layout: ParameterLayout
    public let weights: FloatBuffer
    public let gradients: FloatBuffer

    /// Adapters of zero (fill them, or use `initial` / `load`).
    public init(config: LlamaConfig, ropeStyle: RopeStyle, settings: LoRASettings) throws {
        try settings.validate()
        self.config = config; self.ropeStyle = ropeStyle; self.settings = settings
        var specs: [(ParameterSpec, ParameterStage)] = []
        for l in 0..<config.layers {
            for t in settings.targets {
                let (o, i) = t.shape(config)
                specs.append((ParameterSpec(name: Self.name(l, t, "lora_a"), shape: [settings.rank, i]), .block(l)))
                specs.append((ParameterSpec(name: Self.name(l, t, "lora_b"), shape: [o, settings.rank]), .block(l)))
            }
        }
        layout = ParameterLayout(specs)
        weights = FloatBuffer(count: layout.totalFloats)
        gradients = FloatBuffer(count: layout.totalFloats)
    }

    static func name(_ l: Int, _ t: LoRATarget, _ part: String) -> String { "blk.\(l).\(t.ggufName).\(part)" }

    /// peft's initialisation: A ~ U(−1/√in, 1/√in) (Kaiming-uniform with a = √5), B = 0, drawn from `seed`
    /// in layout order.
    public static func initial(config: LlamaConfig, ropeStyle: RopeStyle, settings: LoRASettings, seed: UInt64) throws -> LoRAAdapters {
        let a = try LoRAAdapters(config: config, ropeStyle: ropeStyle, settings: settings)
        var rng = SeededGenerator(seed: seed)
        for e in a.layout.entries where e.name.hasSuffix("lora_a") {
            let bound = 1 / Double(e.spec.shape[1]).squareRoot(), p = a.weights.base + e.offset
            for i in 0..<e.elements { p[i] = Float((2 * rng.uniform() - 1) * bound) }
        }
        return a
    }

    /// A, B and their gradients for target `t` of block `l` (nil when `t` is not targeted).
    public func pair(_ l: Int, _ t: LoRATarget) -> LoRAPair? {
        guard let ea = layout.entry(Self.name(l, t, "lora_a")), let eb = layout.entry(Self.name(l, t, "lora_b")) else { return nil }
        let (o, i) = t.shape(config)
        return LoRAPair(a: weights.base + ea.offset, b: weights.base + eb.offset, gradA: gradients.base + ea.offset,
                        gradB: gradients.base + eb.offset, inDim: i, outDim: o, rank: settings.rank, scale: settings.scale)
    }

    public var parameterCount: Int { layout.entries.reduce(0) { $0 + $1.elements } }

    // MARK: peft's format

    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"

    /// peft's name of entry `name` (blk.N.attn_q.lora_a → base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight).
    public static func peftName(_ name: String) -> String? {
        let parts = name.split(separator: ".")
        guard parts.count == 4, let l = Int(parts[1]), let t = LoRATarget.allCases.first(where: { $0.ggufName == parts[2] })
        else { return nil }
        return "base_model.model.model.layers.\(l).\(t.hfModule).\(parts[3] == "lora_a" ? "lora_A" : "lora_B").weight"
    }

    /// Whether entry `name`'s rows are reordered between conventions in the file (B of q and k).
    func reordersRows(_ name: String) -> (heads: Int, cols: Int)? {
        guard ropeStyle == .adjacentPairs, name.hasSuffix("lora_b") else { return nil }
        if name.contains(".attn_q.") { return (config.heads, settings.rank) }
        if name.contains(".attn_k.") { return (config.kvHeads, settings.rank) }
        return nil
    }

    /// Entry `e`'s values as peft's file holds them (Hugging Face's RoPE row order).
    public func peftValues(_ e: ParameterLayout.Entry) throws -> [Float] {
        let v = Array(UnsafeBufferPointer(start: weights.base + e.offset, count: e.elements))
        guard let r = reordersRows(e.name) else { return v }
        return try RopeRowOrder.toHalfSplit(v, heads: r.heads, cols: r.cols)
    }

    /// Sets entry `e` from values in peft's row order.
    public func setPeftValues(_ e: ParameterLayout.Entry, _ values: [Float]) throws {
        let v = try reordersRows(e.name).map { try RopeRowOrder.toAdjacentPairs(values, heads: $0.heads, cols: $0.cols) } ?? values
        (weights.base + e.offset).update(from: v, count: e.elements)
    }

    /// adapter_config.json for these adapters on the model at `baseModel`.
    public func peftConfigJSON(baseModel: String?) -> Data {
        let object: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.rank, "lora_alpha": Double(settings.alpha),
            "lora_dropout": Double(settings.dropout), "target_modules": settings.targets.map(\.peftModule),
            "bias": "none", "fan_in_fan_out": false, "use_rslora": false, "use_dora": false,
            "init_lora_weights": true, "inference_mode": true, "modules_to_save": NSNull(),
            "base_model_name_or_path": baseModel ?? NSNull(),
        ]
        return (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data()
    }

    /// The settings a peft adapter folder's adapter_config.json describes (checked for what Offload supports).
    public static func readSettings(folder: String) throws -> LoRASettings {
        let path = folder + "/" + configFile
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[lora] \(folder): no \(configFile); give a peft adapter folder")
        }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw OffloadError("[lora] \(path): not a JSON object")
        }
        func fail(_ what: String) -> OffloadError { OffloadError("[lora] \(path): \(what)") }
        guard (j["peft_type"] as? String)?.uppercased() == "LORA" else { throw fail("peft_type is not LORA") }
        guard let r = j["r"] as? Int, r > 0 else { throw fail("'r' (the rank) is missing or not a positive integer") }
        let alpha = (j["lora_alpha"] as? NSNumber)?.floatValue ?? LoRASettings.defaultAlpha
        let dropout = (j["lora_dropout"] as? NSNumber)?.floatValue ?? 0
        for (key, bad) in [("use_rslora", true), ("use_dora", true), ("fan_in_fan_out", true)] where (j[key] as? Bool) == bad {
            throw fail("\(key) is true: not supported (plain LoRA adapters only)")
        }
        for key in ["layers_to_transform", "layer_replication", "trainable_token_indices", "target_parameters", "exclude_modules"]
            where !(j[key] is NSNull || j[key] == nil) {
            throw fail("\(key) is set: not supported (adapters on every layer's target modules only)")
        }
        for key in ["lora_bias", "use_qalora", "use_bdlora"] where (j[key] as? Bool) == true {
            throw fail("\(key) is true: not supported (plain LoRA adapters only)")
        }
        if let bias = j["bias"] as? String, bias != "none" { throw fail("bias '\(bias)' is not supported (only 'none')") }
        if let m = j["modules_to_save"] as? [Any], !m.isEmpty { throw fail("modules_to_save is not supported") }
        if ["rank_pattern", "alpha_pattern"].contains(where: { !((j[$0] as? [String: Any])?.isEmpty ?? true) }) {
            throw fail("per-module rank_pattern / alpha_pattern is not supported")
        }
        let modules: [String]
        if let list = j["target_modules"] as? [String] { modules = list }
        else if let one = j["target_modules"] as? String { modules = [one] }
        else { throw fail("target_modules is missing") }
        var targets: [LoRATarget] = []
        for m in modules {
            guard let t = LoRATarget.allCases.first(where: { $0.peftModule == m }) else {
                throw fail("target module '\(m)' is not a Llama projection (q_proj … down_proj)")
            }
            targets.append(t)
        }
        return LoRASettings(rank: r, alpha: alpha, targets: LoRATarget.allCases.filter(targets.contains), dropout: dropout)
    }

    /// The peft adapter in `folder`, for a model of `config` (every tensor present, shaped as the model needs,
    /// none left over). Tensors may be F32, F16 or BF16.
    public static func load(folder: String, config: LlamaConfig, ropeStyle: RopeStyle) throws -> LoRAAdapters {
        let settings = try readSettings(folder: folder)
        let a = try LoRAAdapters(config: config, ropeStyle: ropeStyle, settings: settings)
        let path = folder + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: path) else { throw OffloadError("[lora] \(folder): no \(weightsFile)") }
        let file = try SafetensorsFile(path: path)
        var expected = Set<String>()
        for e in a.layout.entries {
            let name = peftName(e.name)!
            expected.insert(name)
            guard let (info, dtype, bytes) = try? file.data(name) else {
                throw OffloadError("[lora] \(path): no tensor \(name); the adapter is not for this model "
                                   + "(\(config.layers) layers, targets \(settings.targets.map(\.peftModule).joined(separator: ",")))")
            }
            guard info.shape == e.spec.shape else {
                throw OffloadError("[lora] \(path): \(name) has shape \(info.shape), but this model needs \(e.spec.shape); "
                                   + "the adapter is for another model")
            }
            guard [.f32, .f16, .bf16].contains(dtype) else { throw OffloadError("[lora] \(path): \(name) is \(dtype), not a float type") }
            try a.setPeftValues(e, Dequantize.toF32(dtype, bytes, count: e.elements))
        }
        if let extra = file.tensors.map(\.name).first(where: { !expected.contains($0) }) {
            throw OffloadError("[lora] \(path): tensor \(extra) belongs to no targeted projection of this model "
                               + "(\(config.layers) layers); the adapter is for another model")
        }
        return a
    }
}

/// One targeted projection's adapter: A (rank × in), B (out × rank), their gradients, and the scale.
public struct LoRAPair {
    public var a, b, gradA, gradB: UnsafeMutablePointer<Float>
    public var inDim, outDim, rank: Int
    public var scale: Float
}
