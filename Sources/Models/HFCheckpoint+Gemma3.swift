// Gemma 3 (text) from a Hugging Face folder: config.json read as transformers' Gemma3TextConfig
// reads it, into the same LlamaConfig the GGUF that llama.cpp's converter makes of the folder
// gives. What Offload's forward cannot honor is refused by the field's name.

import Formats
import Kernels
import Tensors

extension HFCheckpoint {
    /// The text model's config of a Gemma 3 config.json: the object itself (`gemma3_text`), or its
    /// `text_config` (`gemma3`, the multimodal wrapper), with the wrapper's fields as fallbacks.
    static func gemma3TextConfig(_ o: [String: JSONValue], fail: (String) -> OffloadError) throws -> [String: JSONValue] {
        guard o["model_type"]?.string == "gemma3" else { return o }
        guard let v = o["text_config"], v != .null else { return o }
        guard let text = v.object else { throw fail("field text_config is \(v), expected an object") }
        if let t = text["model_type"]?.string, t != "gemma3_text" {
            throw fail("field text_config.model_type is \(jsonQuoted(t)), expected \"gemma3_text\"")
        }
        // transformers reads tie_word_embeddings from the wrapper (Gemma3Config), the rest from text_config.
        var merged = text
        for key in ["tie_word_embeddings", "_name_or_path"] where text[key] == nil { merged[key] = o[key] }
        return merged
    }

    /// Gemma3TextConfig's fields (defaults as transformers 5 has them) as a LlamaConfig, equal to
    /// `LlamaConfig(gguf:)` of convert_hf_to_gguf.py's conversion (but the name).
    static func parseGemma3Config(_ root: [String: JSONValue], folderName: String) throws -> LlamaConfig {
        let prefix = root["model_type"]?.string == "gemma3" && root["text_config"]?.object != nil ? "text_config." : ""
        func fail(_ what: String) -> OffloadError { OffloadError("[hf] config.json: \(what)") }
        let o = try gemma3TextConfig(root, fail: fail)
        func field(_ key: String) -> String { prefix + key }
        func present(_ key: String) -> JSONValue? { o[key].flatMap { $0 == .null ? nil : $0 } }
        func int(_ key: String, default d: Int? = nil) throws -> Int {
            guard let v = present(key) else {
                if let d { return d }
                throw fail("missing field \(field(key))")
            }
            guard let i = v.int, i > 0 else { throw fail("field \(field(key)) is \(v), expected a positive integer") }
            return i
        }
        func number(_ v: JSONValue, _ name: String) throws -> Double {
            guard let x = v.double, x > 0, x.isFinite else { throw fail("field \(name) is \(v), expected a positive number") }
            return x
        }
        func float(_ key: String, default d: Double) throws -> Float {
            guard let v = present(key) else { return Float(d) }
            return Float(try number(v, field(key)))
        }
        func bool(_ key: String, default d: Bool) throws -> Bool {
            guard let v = present(key) else { return d }
            guard let b = v.bool else { throw fail("field \(field(key)) is \(v), expected true or false") }
            return b
        }

        let dim = try int("hidden_size"), heads = try int("num_attention_heads"), layers = try int("num_hidden_layers")
        let headDim = try int("head_dim", default: 256)
        if let act = present("hidden_activation"), act.string != "gelu_pytorch_tanh" {
            throw fail("field \(field("hidden_activation")) is \(act); Gemma 3's forward here is \"gelu_pytorch_tanh\"")
        }
        // What Offload's attention does not have.
        if let cap = present("attn_logit_softcapping") {
            throw fail("field \(field("attn_logit_softcapping")) is \(cap); attention logit soft-capping is not "
                       + "supported (Gemma 3 has none: null)")
        }
        if let s = present("query_pre_attn_scalar") {
            let x = try number(s, field("query_pre_attn_scalar"))
            guard x == Double(headDim) else {
                throw fail("field \(field("query_pre_attn_scalar")) is \(s); attention here scales scores by "
                           + "head_dim^-0.5, so only query_pre_attn_scalar = head_dim (\(headDim)) is supported")
            }
        }
        for key in ["attention_bias", "use_bidirectional_attention"] where try bool(key, default: false) {
            throw fail("field \(field(key)) is true; not supported for gemma3")
        }

        // RoPE: global (full-attention) layers' base and scaling, local (sliding) layers' base.
        // Configs before transformers 5: rope_theta, rope_local_base_freq, rope_scaling (global layers
        // only). transformers 5: rope_parameters = {full_attention: {...}, sliding_attention: {...}}.
        var globalTheta = try float("rope_theta", default: 1_000_000)
        var localTheta = try float("rope_local_base_freq", default: 10_000)
        var scaling: RopeScaling?
        func rope(_ rp: [String: JSONValue], _ name: String, global: Bool) throws {
            if let t = rp["rope_theta"], t != .null {
                let x = Float(try number(t, name + ".rope_theta"))
                if global { globalTheta = x } else { localTheta = x }
            }
            let type = rp["rope_type"]?.string ?? rp["type"]?.string ?? "default"
            switch (type, global) {
            case ("default", _): break
            case ("linear", true):
                guard let f = rp["factor"] else { throw fail("field \(name).factor is missing") }
                scaling = .linear(factor: Float(try number(f, name + ".factor")))
            default:
                throw fail("field \(name).rope_type is \(jsonQuoted(type)); supported for gemma3: default"
                           + (global ? ", linear" : " (sliding layers are never scaled)"))
            }
        }
        if let v = present("rope_scaling") {
            guard let rp = v.object else { throw fail("field \(field("rope_scaling")) is \(v), expected an object") }
            try rope(rp, field("rope_scaling"), global: true)
        }
        if let v = present("rope_parameters") {
            guard let rp = v.object else { throw fail("field \(field("rope_parameters")) is \(v), expected an object") }
            if rp["full_attention"] != nil || rp["sliding_attention"] != nil {
                for (key, global) in [("full_attention", true), ("sliding_attention", false)] {
                    guard let e = rp[key], e != .null else { continue }
                    guard let eo = e.object else {
                        throw fail("field \(field("rope_parameters")).\(key) is \(e), expected an object")
                    }
                    try rope(eo, field("rope_parameters") + "." + key, global: global)
                }
            } else {
                try rope(rp, field("rope_parameters"), global: true)
            }
        }

        // Local and global layers: layer_types, else every sliding_window_pattern-th layer global
        // (default 6), as Gemma3TextConfig derives it.
        let declaredPattern = try int("sliding_window_pattern", default: 6)
        var local: [Bool]
        if let v = present("layer_types") {
            guard let a = v.array, a.count == layers else {
                throw fail("field \(field("layer_types")) is \(v), expected \(layers) layer types")
            }
            local = try a.enumerated().map { i, t in
                switch t.string {
                case "sliding_attention": return true
                case "full_attention": return false
                default: throw fail("field \(field("layer_types"))[\(i)] is \(t), expected \"sliding_attention\" or \"full_attention\"")
                }
            }
        } else {
            local = (0..<layers).map { ($0 + 1) % declaredPattern != 0 }
        }
        var window: (size: Int, pattern: Int, ropeTheta: Float)?
        if local.contains(true) {
            // Offload's form: layer l is global when (l + 1) is a multiple of the pattern.
            let derived = (local.firstIndex(of: false) ?? layers) + 1
            let fits = { (p: Int) in (0..<layers).allSatisfy { local[$0] == (($0 + 1) % p != 0) } }
            guard let pattern = [declaredPattern, 6, derived].first(where: fits) else {
                throw fail("field \(field("layer_types")) is \(local.map { $0 ? "sliding" : "full" }); only every "
                           + "n-th layer global (layers n-1, 2n-1, ...) is supported")
            }
            guard let w = present("sliding_window") else {
                throw fail("field \(field("sliding_window")) is null, but layers \(local.enumerated().filter(\.1).map(\.0)) "
                           + "are sliding_attention")
            }
            guard let size = w.int, size > 0 else { throw fail("field \(field("sliding_window")) is \(w), expected a positive integer") }
            window = (size, pattern, localTheta)
        }

        var softcap: Float?
        if let v = present("final_logit_softcapping") {
            softcap = Float(try number(v, field("final_logit_softcapping")))
        }
        var c = LlamaConfig(
            name: o["_name_or_path"]?.string.flatMap { $0.isEmpty ? nil : $0 } ?? folderName, architecture: .gemma3,
            vocabSize: try int("vocab_size", default: 262_208), dim: dim, ffnDim: try int("intermediate_size"),
            layers: layers, heads: heads, kvHeads: try int("num_key_value_heads", default: 4), headDim: headDim,
            ropeTheta: globalTheta, rmsEps: try float("rms_norm_eps", default: 1e-6),
            contextLength: try int("max_position_embeddings", default: 131_072),
            tiedEmbeddings: try bool("tie_word_embeddings", default: true), ropeScaling: scaling)
        c.slidingWindow = window
        c.finalLogitSoftcap = softcap
        return c
    }
}
