// The element type of every tensor of an exported model: the mixes llama-quantize writes
// (llama-quant.cpp: llama_tensor_get_type, without an importance matrix or overrides), as a
// pure function of a tensor's name, shape and the layer count. Not the quantizers themselves
// (CKernels: ck_quantize_rows) nor the writing (exportGGUF).

import Tensors

/// A model file's type as `offload export` / `quantize` name it, and llama-quantize's mix for it.
public enum ExportType: String, CaseIterable, Sendable {
    case f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q4_1

    /// The names `--type` accepts, for messages.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// GGUF's `general.file_type` (llama_ftype) for this mix.
    public var fileType: Int {
        switch self {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q4_k_m: return 15
        case .q5_k_m: return 17
        case .q6_k: return 18
        }
    }

    /// The type most matrices get; the mix rules below move some tensors off it.
    public var baseType: DType {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .q8_0: return .q8_0
        case .q6_k: return .q6_k
        case .q5_k_m: return .q5_k
        case .q4_k_m: return .q4_k
        case .q4_0: return .q4_0
        case .q4_1: return .q4_1
        }
    }

    /// The type llama-quantize gives tensor `name` of `shape` (outermost first) in a model of
    /// `layers` blocks; `tiedEmbeddings` when the file has no output.weight (token_embd then
    /// follows the output's rule); `experts`: the expert count of a mixture of experts (0: dense).
    ///
    /// Vectors and norms stay f32. The output matrix gets Q6_K (Q8_0 in a q8_0 file). In q4_k_m
    /// and q5_k_m, attn_v and ffn_down get Q6_K in the first and last eighth of the layers and
    /// every third layer between (`use_more_bits`). A row whose length is not a whole number of
    /// the type's blocks falls back: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, an output matrix to
    /// Q8_0, and to f16 when not even a multiple of 32. Routers (`ffn_gate_inp`) stay f32; with 8
    /// experts attn_k and attn_v get Q8_0 and (q4_k_m) attn_output Q5_K; ffn_down_exps follows ffn_down.
    public func dtype(tensor name: String, shape: [Int], layers: Int, tiedEmbeddings: Bool, experts: Int = 0) -> DType {
        guard shape.count >= 2, name.hasSuffix("weight"), !name.contains("_norm.weight"),
              !name.hasSuffix(".ffn_gate_inp.weight") else { return .f32 }   // routers are never quantized
        if self == .f32 || self == .f16 { return baseType }
        let cols = shape.last ?? 0
        var t = baseType
        let layer = Self.layerIndex(name)
        if name == "output.weight" || (tiedEmbeddings && name == "token_embd.weight") {
            if cols % t.blockElements != 0 { t = .q8_0 } else if t != .q8_0 { t = .q6_k }
        } else if experts == 8, name.hasSuffix(".attn_v.weight") || name.hasSuffix(".attn_k.weight") {
            t = .q8_0   // "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
        } else if experts == 8, self == .q4_k_m, name.hasSuffix(".attn_output.weight") {
            t = .q5_k
        } else if let layer, name.hasSuffix(".attn_v.weight") || name.hasSuffix(".ffn_down.weight")
                    || name.hasSuffix(".ffn_down_exps.weight") {
            if self == .q4_k_m || self == .q5_k_m, Self.useMoreBits(layer, layers) { t = .q6_k }
        }
        return Self.fallback(t, cols: cols)
    }

    /// llama.cpp's `use_more_bits`: the layers whose attn_v and ffn_down get more bits.
    public static func useMoreBits(_ layer: Int, _ layers: Int) -> Bool {
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
    }

    /// llama.cpp's `tensor_type_fallback` for the types these mixes use.
    static func fallback(_ t: DType, cols: Int) -> DType {
        guard cols % t.blockElements != 0 else { return t }
        let next: DType
        switch t {
        case .q4_k: next = .q5_0
        case .q5_k: next = .q5_1
        case .q6_k: next = .q8_0
        default: next = t
        }
        return cols % next.blockElements == 0 ? next : .f16
    }

    /// N in "blk.N.…".
    static func layerIndex(_ name: String) -> Int? {
        guard name.hasPrefix("blk.") else { return nil }
        return Int(name.dropFirst(4).prefix { $0 != "." })
    }
}
