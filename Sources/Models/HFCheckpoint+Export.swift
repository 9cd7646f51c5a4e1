// Conversion between checkpoint layouts: any WeightSource to a Hugging Face
// folder (config.json + model.safetensors) or to a GGUF file. Quantized tensors
// are dequantized (and, for a quantized GGUF, quantized again in llama-quantize's mixes);
// Q and K rows are reordered when the RoPE conventions differ.
// Tensors are produced one at a time (safetensors, GGUF mixes), so a file may exceed memory.

import Foundation
import Formats
import Kernels
import Tensors

/// Writes `source` as a Hugging Face Llama checkpoint: `folder`/config.json and
/// `folder`/model.safetensors, tensors in `dtype` (f32, f16 or bf16).
///
/// Q and K rows are put in half-split order when the source uses adjacent pairs
/// (GGUF), so transformers' LlamaForCausalLM loads the folder as it is.
/// - Note: both files are written atomically; the weights first, so a folder with a
///   config.json always has its weights.
public func exportHFCheckpoint(from source: WeightSource, to folder: String, dtype: DType = .f32) throws {
    let ctx = "[hf export] \((folder as NSString).lastPathComponent)"
    guard !dtype.isQuantized else { throw OffloadError("\(ctx): dtype \(dtype) is not a safetensors type; use f32, f16 or bf16") }
    let cfg = source.config
    try cfg.requireDense(for: "export to a Hugging Face folder")
    let json = try hfConfigJSON(cfg, dtype: dtype)   // first: a config with no config.json form writes nothing
    do {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    } catch {
        throw OffloadError("\(ctx): cannot create folder: \(error.localizedDescription)")
    }
    var w = SafetensorsWriter()
    w.metadata = ["format": "pt"]
    for spec in cfg.parameterTable {
        guard let hf = HFNames.hf(spec.name) else { throw OffloadError("\(ctx): no Hugging Face name for \(spec.name)") }
        w.tensors.append(.init(name: hf, dtype: dtype, shape: spec.shape) {
            try convertedTensor(source, spec, to: dtype, order: .halfSplit)
        })
    }
    try w.write(to: (folder as NSString).appendingPathComponent("model.safetensors"))
    try writeAtomically(Data(json.utf8), to: (folder as NSString).appendingPathComponent("config.json"),
                        context: "[hf export]")
}

/// Writes `source` as a GGUF file with the llama.* metadata `LlamaConfig(gguf:)`
/// reads; matrices in `dtype` (f32, f16 or bf16), norms in f32.
///
/// Q and K rows are put in adjacent-pairs order when the source uses half-split
/// (Hugging Face), as llama.cpp's converter does. `tokenizer.*` metadata is
/// copied from `tokenizerFrom`, or from the source itself when it is a GGUF file.
public func exportGGUF(from source: WeightSource, to path: String, dtype: DType = .f32,
                       tokenizerFrom: GGUFFile? = nil) throws {
    let ctx = "[gguf export] \((path as NSString).lastPathComponent)"
    guard !dtype.isQuantized else { throw OffloadError("\(ctx): dtype \(dtype) is not supported here; use f32, f16 or bf16") }
    let c = source.config
    try c.requireDense(for: "GGUF export and quantization")
    var w = GGUFWriter()
    try c.writeGGUF(fileType: dtype == .f32 ? 0 : dtype == .f16 ? 1 : 32, into: &w)
    if let tok = tokenizerFrom ?? (source as? GGUFWeights)?.file {
        for key in tok.metadataKeys where key.hasPrefix("tokenizer.") { w.set(key, tok.metadata[key]!) }
    }
    for spec in c.parameterTable {
        let dt: DType = spec.shape.count == 1 ? .f32 : dtype
        let data = try convertedTensor(source, spec, to: dt, order: c.architecture.ggufRopeStyle)
        w.tensors.append(.init(name: spec.name, dtype: dt, shape: spec.shape, data: data))
    }
    try w.write(to: path)
}

/// Writes `source` as a GGUF file in `type`'s mix: each matrix in the type llama-quantize gives
/// it (`ExportType.dtype(tensor:…)`), quantized as ggml's reference quantizers do, norms in f32.
///
/// Tensors are converted and written one at a time, so the file may be larger than memory.
/// `tokenizer.*` metadata comes from `tokenizerFrom`, or from the source when it is a GGUF file.
/// `progress(done, total, name, dtype)` follows each tensor.
public func exportGGUF(from source: WeightSource, to path: String, type: ExportType,
                       tokenizerFrom: GGUFFile? = nil, pool: ComputePool? = nil,
                       progress: @escaping (_ done: Int, _ total: Int, _ name: String, _ dtype: DType) -> Void
                           = { _, _, _, _ in }) throws {
    let c = source.config
    try c.requireDense(for: "GGUF export and quantization")
    var w = GGUFWriter()
    try c.writeGGUF(fileType: type.fileType, into: &w)
    if let tok = tokenizerFrom ?? (source as? GGUFWeights)?.file {
        for key in tok.metadataKeys where key.hasPrefix("tokenizer.") { w.set(key, tok.metadata[key]!) }
    }
    let specs = c.parameterTable
    let tied = !specs.contains { $0.name == "output.weight" }
    var done = 0
    for spec in specs {
        let dt = type.dtype(tensor: spec.name, shape: spec.shape, layers: c.layers, tiedEmbeddings: tied)
        w.tensors.append(.init(name: spec.name, dtype: dt, shape: spec.shape) { h in
            let data = try convertedTensor(source, spec, to: dt, order: c.architecture.ggufRopeStyle, pool: pool)
            try h.write(contentsOf: data)
            source.dropResidentPages()
            done += 1
            progress(done, specs.count, spec.name, dt)
        })
    }
    try w.write(to: path)
}

/// One parameter of `source` as `dtype` bytes with Q/K rows in `order`. Copies
/// the stored bytes when no conversion is needed, so f32 → f32 is exact.
func convertedTensor(_ source: WeightSource, _ spec: ParameterSpec, to dtype: DType, order: RopeStyle,
                      pool: ComputePool? = nil) throws -> Data {
    let t = try source.tensor(spec.name)
    guard t.shape == spec.shape else {
        throw OffloadError("[export] \(source.sourceName): tensor \(spec.name) has shape \(t.shape), expected \(spec.shape)")
    }
    guard let need = t.dtype.byteCount(elements: t.elements), need == t.bytes.count else {
        throw OffloadError("[export] \(source.sourceName): tensor \(spec.name) has \(t.bytes.count) bytes, "
                           + "not \(t.elements) \(t.dtype) values")
    }
    let heads: Int? = spec.name.hasSuffix(".attn_q.weight") ? source.config.heads
        : spec.name.hasSuffix(".attn_k.weight") ? source.config.kvHeads : nil
    let reorder = heads != nil && source.ropeStyle != order
    if !reorder, t.dtype == dtype { return Data(t.bytes) }
    var f = t.elements == 0 ? [] : Dequantize.toF32(t.dtype, t.bytes, count: t.elements)
    if reorder, let heads {
        let cols = spec.shape.last!
        f = order == .halfSplit ? try RopeRowOrder.toHalfSplit(f, heads: heads, cols: cols)
                                : try RopeRowOrder.toAdjacentPairs(f, heads: heads, cols: cols)
    }
    guard Quantize.canWrite(dtype) else { throw OffloadError("[export] \(spec.name): cannot write \(dtype)") }
    return Data(try Quantize.rows(f, to: dtype, cols: spec.shape.last ?? 1, pool: pool))
}

/// config.json's `rope_scaling`, as transformers writes it. Per-frequency divisors (from a GGUF's
/// `rope_freqs.weight`) have no form there.
func hfRopeScalingJSON(_ s: RopeScaling?) throws -> String {
    switch s {
    case nil: return "null"
    case .linear(let f)?: return "{\"rope_type\": \"linear\", \"factor\": \(f)}"
    case .llama3(let f, let low, let high, let original)?:
        return "{\"rope_type\": \"llama3\", \"factor\": \(f), \"low_freq_factor\": \(low), "
            + "\"high_freq_factor\": \(high), \"original_max_position_embeddings\": \(original)}"
    case .divisors?:
        throw OffloadError("[export] RoPE scaling given as per-frequency factors (a GGUF's rope_freqs.weight) "
                           + "has no Hugging Face config.json form; export as GGUF instead")
    }
}

/// config.json for transformers' LlamaForCausalLM.
func hfConfigJSON(_ c: LlamaConfig, dtype: DType) throws -> String {
    guard c.architecture != .gemma3 else {
        throw OffloadError("[export] \(c.name): writing gemma3 models is not supported yet")
    }
    let torchDtype = dtype == .f16 ? "float16" : dtype == .bf16 ? "bfloat16" : "float32"
    let fields: [(String, String)] = [
        ("_name_or_path", jsonQuoted(c.name)),
        ("architectures", c.architecture == .qwen2 ? "[\"Qwen2ForCausalLM\"]" : "[\"LlamaForCausalLM\"]"),
        ("model_type", "\"\(c.architecture.rawValue)\""),
        ("hidden_size", "\(c.dim)"),
        ("intermediate_size", "\(c.ffnDim)"),
        ("num_hidden_layers", "\(c.layers)"),
        ("num_attention_heads", "\(c.heads)"),
        ("num_key_value_heads", "\(c.kvHeads)"),
        ("head_dim", "\(c.headDim)"),
        ("hidden_act", "\"silu\""),
        ("rms_norm_eps", "\(c.rmsEps)"),
        ("rope_theta", "\(c.ropeTheta)"),
        ("rope_scaling", try hfRopeScalingJSON(c.ropeScaling)),
        ("attention_bias", c.attentionBias ? "true" : "false"),
        ("mlp_bias", "false"),
        ("vocab_size", "\(c.vocabSize)"),
        ("max_position_embeddings", "\(c.contextLength)"),
        ("tie_word_embeddings", c.tiedEmbeddings ? "true" : "false"),
        ("torch_dtype", "\"\(torchDtype)\""),
    ]
    return "{\n" + fields.map { "  \(jsonQuoted($0.0)): \($0.1)" }.joined(separator: ",\n") + "\n}\n"
}
