// Weights from a Hugging Face Llama checkpoint folder: config.json plus one
// model.safetensors or shards listed in model.safetensors.index.json. Tensors
// are served as the files hold them (memory-mapped, HF row order); the model
// applies the half-split RoPE convention, so nothing is copied or permuted. Gemma 3's norm
// weights are the one exception: its RMSNorm multiplies by (1 + weight), and llama.cpp's converter
// stores weight + 1, so those small vectors are served with 1 added (in fp32), as GGUF has them.

import Foundation
import Formats
import Kernels
import Tensors

public final class HFCheckpoint: WeightSource {
    public let folder: String
    public let config: LlamaConfig
    public var ropeStyle: RopeStyle { .halfSplit }
    public var sourceName: String { (folder as NSString).lastPathComponent }
    /// The safetensors files, in the order first named.
    public let files: [SafetensorsFile]
    /// HF tensor name → index into `files`.
    private let location: [String: Int]
    /// Where the text model's tensors are: "model." (Gemma3ForCausalLM, Llama, Qwen2), or a
    /// multimodal Gemma 3 checkpoint's "language_model.model." / "model.language_model.".
    private let modelPrefix: String
    private let headName: String
    /// Gemma 3's norm weights plus 1, as fp32 (GGUF name → values), owned here.
    private var shiftedNorms: [String: UnsafeMutableRawBufferPointer] = [:]

    public init(folder: String) throws {
        self.folder = folder
        let fm = FileManager.default
        let name = (folder as NSString).lastPathComponent
        func path(_ f: String) -> String { (folder as NSString).appendingPathComponent(f) }
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw OffloadError("[hf] \(name): not a folder")
        }

        var parsed = try Self.parseConfig(path: path("config.json"), folderName: name)

        var files: [SafetensorsFile] = []
        var location: [String: Int] = [:]
        let single = path("model.safetensors"), indexPath = path("model.safetensors.index.json")
        if fm.fileExists(atPath: single) {
            let f = try SafetensorsFile(path: single)
            files = [f]
            for t in f.tensors { location[t.name] = 0 }
        } else if fm.fileExists(atPath: indexPath) {
            let map = try Self.parseIndex(path: indexPath)
            var fileIndex: [String: Int] = [:]
            for shard in Set(map.values).sorted() {
                guard fm.fileExists(atPath: path(shard)) else {
                    throw OffloadError("[hf] model.safetensors.index.json: shard \(shard) is missing from \(name)")
                }
                fileIndex[shard] = files.count
                files.append(try SafetensorsFile(path: path(shard)))
            }
            for (tensor, shard) in map.sorted(by: { $0.key < $1.key }) {
                let i = fileIndex[shard]!
                guard files[i].info(tensor) != nil else {
                    throw OffloadError("[hf] model.safetensors.index.json: tensor \(tensor) is mapped to \(shard), "
                                       + "which does not hold it")
                }
                location[tensor] = i
            }
        } else {
            throw OffloadError("[hf] \(name): no model.safetensors or model.safetensors.index.json")
        }
        self.files = files
        self.location = location
        if parsed.architecture == .gemma3 {
            // A multimodal Gemma 3 checkpoint: only its text model is run here; a vision tower is refused.
            let vision = location.keys.filter { $0.contains("vision_tower.") || $0.contains("multi_modal_projector.") }
            if let first = vision.min() {
                throw OffloadError("[hf] \(name): holds a vision tower (\(vision.count) tensors, e.g. \(first)); only "
                                   + "Gemma 3's text model is supported (a Gemma3ForCausalLM checkpoint)")
            }
        }
        let prefixes = [("model.", "lm_head.weight"), ("language_model.model.", "language_model.lm_head.weight"),
                        ("model.language_model.", "lm_head.weight")]
        (modelPrefix, headName) = prefixes.first { location[$0.0 + "embed_tokens.weight"] != nil } ?? prefixes[0]
        if location[headName] == nil { parsed.tiedEmbeddings = true }
        config = parsed
        try config.validate()
        try validateTensors()
        if config.architecture == .gemma3 {
            for spec in config.parameterTable where spec.name.hasSuffix("norm.weight") {
                let values = try vector(spec.name).map { $0 + 1 }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: values.count * 4, alignment: 64)
                values.withUnsafeBytes { buffer.copyMemory(from: $0) }
                shiftedNorms[spec.name] = buffer
            }
        }
        try validateTensors()
    }

    deinit { shiftedNorms.values.forEach { $0.deallocate() } }

    /// The Hugging Face name this folder holds the GGUF-named tensor under.
    public func hfName(_ name: String) -> String? {
        guard let hf = HFNames.hf(name, architecture: config.architecture) else { return nil }
        if hf == "lm_head.weight" { return headName }
        return hf.hasPrefix("model.") ? modelPrefix + hf.dropFirst("model.".count) : hf
    }

    /// The tensor GGUF names `name`, read under its Hugging Face name.
    public func tensor(_ name: String) throws -> StoredTensor {
        if let b = shiftedNorms[name] {
            return StoredTensor(name: name, dtype: .f32, shape: [b.count / 4], bytes: UnsafeRawBufferPointer(b))
        }
        guard let hf = hfName(name) else {
            throw OffloadError("[hf] \(sourceName): \(name) is not a \(config.architecture.rawValue) tensor name")
        }
        guard let i = location[hf] else {
            throw OffloadError("[hf] \(sourceName): missing tensor \(hf) (\(name))")
        }
        let (info, dtype, bytes) = try files[i].data(hf)
        return StoredTensor(name: name, dtype: dtype, shape: info.shape, bytes: bytes)
    }

    public func dropResidentPages() { files.forEach { $0.dropResidentPages() } }

    /// HF tensor names present, sorted.
    public var tensorNames: [String] { location.keys.sorted() }

    // MARK: config.json

    /// Reads a Llama config.json. Fields Hugging Face treats as optional get its defaults.
    public static func parseConfig(path: String, folderName: String) throws -> LlamaConfig {
        func fail(_ what: String) -> OffloadError { OffloadError("[hf] config.json: \(what)") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[hf] \(folderName): config.json is missing or unreadable")
        }
        let o: [String: JSONValue]
        do {
            guard let obj = try JSONValue.parse(data).object else { throw fail("not a JSON object") }
            o = obj
        } catch let e as OffloadJSONError {
            throw fail("bad JSON: \(e.message)")
        }

        let archs = o["architectures"]?.array?.compactMap(\.string) ?? []
        let modelType = o["model_type"]?.string
        if modelType == "gemma3_text" || modelType == "gemma3"
            || (modelType == nil && (archs.contains("Gemma3ForCausalLM") || archs.contains("Gemma3ForConditionalGeneration"))) {
            return try parseGemma3Config(o, folderName: folderName)
        }
        let arch: ModelArchitecture
        if modelType == "llama" || (modelType == nil && archs.contains("LlamaForCausalLM")) {
            arch = .llama
        } else if modelType == "qwen2" || (modelType == nil && archs.contains("Qwen2ForCausalLM")) {
            arch = .qwen2
        } else if modelType == "mixtral" || (modelType == nil && archs.contains("MixtralForCausalLM")) {
            arch = .llama
        } else if modelType == "qwen2_moe" || (modelType == nil && archs.contains("Qwen2MoeForCausalLM")) {
            arch = .qwen2moe
        } else if modelType == "olmoe" || (modelType == nil && archs.contains("OlmoeForCausalLM")) {
            arch = .olmoe
        } else if modelType == "qwen3_moe" || (modelType == nil && archs.contains("Qwen3MoeForCausalLM")) {
            arch = .qwen3moe
        } else {
            throw fail("model_type is \(o["model_type"]?.description ?? "missing") and architectures is "
                       + "\(o["architectures"]?.description ?? "missing"); expected model_type \"llama\" "
                       + "(LlamaForCausalLM), \"qwen2\" (Qwen2ForCausalLM), \"gemma3_text\" (Gemma3ForCausalLM), "
                       + "\"mixtral\" (MixtralForCausalLM), \"qwen2_moe\" (Qwen2MoeForCausalLM), \"qwen3_moe\" (Qwen3MoeForCausalLM) or \"olmoe\" "
                       + "(OlmoeForCausalLM)")
        }
        let mixtral = modelType == "mixtral" || (modelType == nil && archs.contains("MixtralForCausalLM"))
        func int(_ key: String, default d: Int? = nil) throws -> Int {
            guard let v = o[key], v != .null else {
                if let d { return d }
                throw fail("missing field \(key)")
            }
            guard let i = v.int, i > 0 else { throw fail("field \(key) is \(v), expected a positive integer") }
            return i
        }
        func float(_ key: String, default d: Double) throws -> Float {
            guard let v = o[key], v != .null else { return Float(d) }
            guard let x = v.double, x > 0, x.isFinite else { throw fail("field \(key) is \(v), expected a positive number") }
            return Float(x)
        }
        func bool(_ key: String, default d: Bool) throws -> Bool {
            guard let v = o[key], v != .null else { return d }
            guard let b = v.bool else { throw fail("field \(key) is \(v), expected true or false") }
            return b
        }
        if let act = o["hidden_act"], act != .null, act.string != "silu" {
            throw fail("field hidden_act is \(act), expected \"silu\"")
        }
        // RoPE: `rope_scaling` (configs written before transformers 5) or `rope_parameters`
        // (transformers 5, which also moves rope_theta inside it).
        var ropeTheta = try float("rope_theta", default: 10000)
        var ropeScaling: RopeScaling?
        for key in ["rope_parameters", "rope_scaling"] {
            guard let v = o[key], v != .null else { continue }
            guard let rp = v.object else { throw fail("field \(key) is \(v), expected an object") }
            func number(_ name: String) throws -> Float {
                guard let x = rp[name]?.double, x > 0, x.isFinite else {
                    throw fail("field \(key).\(name) is \(rp[name].map { "\($0)" } ?? "missing"), expected a positive number")
                }
                return Float(x)
            }
            if rp["rope_theta"] != nil { ropeTheta = try number("rope_theta") }
            let type = rp["rope_type"]?.string ?? rp["type"]?.string ?? "default"
            switch type {
            case "default": break
            case "linear": ropeScaling = .linear(factor: try number("factor"))
            case "llama3":
                ropeScaling = .llama3(factor: try number("factor"), lowFrequencyFactor: try number("low_freq_factor"),
                                      highFrequencyFactor: try number("high_freq_factor"),
                                      originalContext: Int(try number("original_max_position_embeddings")))
            default:
                throw fail("field \(key).rope_type is \(jsonQuoted(type)); supported: default, linear, llama3")
            }
        }
        // Qwen2 always has q/k/v biases (its config has no switch); a Llama with biases is refused.
        for key in ["attention_bias", "mlp_bias"] where arch != .qwen2 && arch != .qwen2moe || key == "mlp_bias" {
            if try bool(key, default: false) { throw fail("field \(key) is true; biases are not supported") }
        }
        var context = try int("max_position_embeddings", default: 2048)
        // Sliding-window attention equals full attention up to the window: the context stops there.
        let sliding = arch == .llama ? o["sliding_window"] != nil : try bool("use_sliding_window", default: false)
        if sliding, let w = o["sliding_window"]?.int, w > 0 { context = min(context, w) }
        let dim = try int("hidden_size"), heads = try int("num_attention_heads")
        var moe: MoEConfig?
        if mixtral || [.qwen2moe, .olmoe, .qwen3moe].contains(arch) {
            // transformers 5 writes num_local_experts for every family; checkpoints before it num_experts.
            let experts = try int(o["num_local_experts"].map { $0 != .null } ?? false ? "num_local_experts" : "num_experts")
            let used = try int("num_experts_per_tok")
            guard used <= experts else {
                throw fail("field num_experts_per_tok (\(used)) is above the expert count (\(experts))")
            }
            moe = MoEConfig(experts: experts, used: used,
                            normalizeTopK: mixtral ? true : try bool("norm_topk_prob", default: false),
                            sharedFFNDim: arch == .qwen2moe ? try int("shared_expert_intermediate_size") : nil)
            if arch == .qwen2moe || arch == .qwen3moe {
                // Every layer sparse: decoder_sparse_step 1 and no mlp_only_layers.
                if try int("decoder_sparse_step", default: 1) != 1 {
                    throw fail("field decoder_sparse_step is \(o["decoder_sparse_step"]!); only 1 (every layer a mixture of experts) is supported")
                }
                if let only = o["mlp_only_layers"]?.array, !only.isEmpty {
                    throw fail("field mlp_only_layers lists \(only.count) dense layers; only every layer a mixture of experts is supported")
                }
            }
            if let clip = o["clip_qkv"], clip != .null {
                throw fail("field clip_qkv is \(clip); clipping q, k and v is not supported")
            }
        }
        var parsed = LlamaConfig(
            name: o["_name_or_path"]?.string.flatMap { $0.isEmpty ? nil : $0 } ?? folderName, architecture: arch,
            vocabSize: try int("vocab_size"), dim: dim, ffnDim: try int("intermediate_size"),
            layers: try int("num_hidden_layers"), heads: heads,
            kvHeads: try int("num_key_value_heads", default: heads),
            headDim: try int("head_dim", default: dim / max(heads, 1)),
            ropeTheta: ropeTheta,
            rmsEps: try float("rms_norm_eps", default: 1e-6),
            contextLength: context,
            tiedEmbeddings: try bool("tie_word_embeddings", default: false), ropeScaling: ropeScaling)
        if arch == .qwen2moe || arch == .qwen3moe { parsed.ffnDim = try int("moe_intermediate_size") }
        parsed.moe = moe
        return parsed
    }

    /// The weight_map of model.safetensors.index.json: HF tensor name → shard file name.
    static func parseIndex(path: String) throws -> [String: String] {
        func fail(_ what: String) -> OffloadError { OffloadError("[hf] model.safetensors.index.json: \(what)") }
        guard let data = FileManager.default.contents(atPath: path) else { throw fail("unreadable") }
        let root: JSONValue
        do { root = try JSONValue.parse(data) } catch let e as OffloadJSONError { throw fail("bad JSON: \(e.message)") }
        guard let wm = root.object?["weight_map"] else { throw fail("missing field weight_map") }
        guard let o = wm.object else { throw fail("weight_map is \(wm.kind), expected an object") }
        var map: [String: String] = [:]
        for (tensor, v) in o {
            guard let shard = v.string else { throw fail("weight_map \(tensor) is \(v), expected a file name") }
            guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                throw fail("weight_map \(tensor) names \(jsonQuoted(shard)), which is not a file in the folder")
            }
            map[tensor] = shard
        }
        return map
    }
}
