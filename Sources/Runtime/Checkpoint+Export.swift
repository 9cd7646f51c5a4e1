// A training checkpoint's weights as a GGUF file that `offload generate` and
// llama.cpp load: llama.* metadata from the config, the tokenizer copied from the
// GGUF training started from (when there was one), norms in f32 and matrices in
// the chosen type's mix (llama-quantize's, see ExportType). Q/K rows are written in GGUF's adjacent-pair RoPE order.

import Foundation
import Formats
import Kernels
import Models
import Tensors


extension Checkpoint {
    /// Writes the checkpoint in `dir` as a GGUF file at `out` (atomically).
    public static func exportGGUF(_ dir: String, to out: String, type: ExportType) throws {
        let info = try readInfo(dir)
        guard info.options.lora == nil else {
            throw OffloadError("[export] \(dir) is a LoRA checkpoint (a peft adapter): add --merge to write the base model "
                               + "with the adapter merged in")
        }
        let model = try loadModel(dir, info: info)
        var source: GGUFFile?
        if let path = info.sourceModel, path.hasSuffix(".gguf"), FileManager.default.fileExists(atPath: path) {
            source = try GGUFFile(path: path)
        }
        try exportGGUF(model, to: out, type: type, metadataFrom: source)
    }

    /// Writes `model`'s weights as GGUF; tokenizer.* (and general.* not set here) come from `source`.
    public static func exportGGUF(_ model: TrainableLlama, to out: String, type: ExportType,
                                  metadataFrom source: GGUFFile? = nil) throws {
        let c = model.config
        var w = GGUFWriter()
        try llamaMetadata(c, fileType: type.fileType, byteVocabulary: source == nil, into: &w)
        if let source {
            for key in source.metadataKeys where key.hasPrefix("tokenizer.") || (key.hasPrefix("general.")
                && !w.metadata.contains { $0.key == key } && key != "general.alignment" && key != "general.file_type") {
                if let v = source.metadata[key] { w.set(key, v) }
            }
        }
        let tied = !model.layout.entries.contains { $0.name == "output.weight" }
        for e in model.layout.entries {
            var values = Array(UnsafeBufferPointer(start: model.weights.base + e.offset, count: e.elements))
            if model.ropeStyle == .halfSplit, e.name.hasSuffix("attn_q.weight") || e.name.hasSuffix("attn_k.weight") {
                values = halfSplitToAdjacentPairs(values, rows: e.spec.shape[0], cols: e.spec.shape[1], headDim: c.headDim)
            }
            let dtype = type.dtype(tensor: e.name, shape: e.spec.shape, layers: c.layers, tiedEmbeddings: tied)
            let data = Data(try Quantize.rows(values, to: dtype, cols: e.spec.shape.last ?? 1))
            w.tensors.append(.init(name: e.name, dtype: dtype, shape: e.spec.shape, data: data))
        }
        try w.write(to: out)
    }

    /// The `llama.*` keys `LlamaConfig(gguf:)` reads, and — for models trained on UTF-8 bytes
    /// (random `--config` shapes) — a byte-level GPT-2 vocabulary with no merges, so id b is
    /// byte b for llama.cpp as for Offload; ids past 255 are unused.
    public static func llamaMetadata(_ c: LlamaConfig, fileType: Int, byteVocabulary: Bool, into w: inout GGUFWriter) throws {
        try c.writeGGUF(fileType: fileType, into: &w)
        if byteVocabulary, c.vocabSize >= 256 {
            w.set("tokenizer.ggml.model", .string("gpt2"))
            w.set("tokenizer.ggml.pre", .string("default"))
            let tokens = byteLevelTokens() + (256..<c.vocabSize).map { "<unused\($0)>" }
            w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }, .string))
            w.set("tokenizer.ggml.token_type", .array((0..<c.vocabSize).map { .int($0 < 256 ? 1 : 5, .int32) }, .int32))
            w.set("tokenizer.ggml.merges", .array([], .string))
            w.set("tokenizer.ggml.add_bos_token", .bool(false))
        }
    }

    /// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the rest map to U+0100….
    static func byteLevelTokens() -> [String] {
        var printable = Set(Array(33...126) + Array(161...172) + Array(174...255))
        var extra = 0
        return (0..<256).map { b -> String in
            if printable.contains(b) { return String(UnicodeScalar(UInt8(b))) }
            defer { extra += 1 }
            printable.insert(b)
            return String(UnicodeScalar(UInt32(256 + extra))!)
        }
    }

    /// Reorders each head's rows from Hugging Face's half-split RoPE layout to GGUF's adjacent pairs:
    /// GGUF row 2i ← HF row i, GGUF row 2i+1 ← HF row i + headDim/2.
    static func halfSplitToAdjacentPairs(_ w: [Float], rows: Int, cols: Int, headDim: Int) -> [Float] {
        var out = w
        let half = headDim / 2
        for h in 0..<rows / headDim {
            for i in 0..<half {
                for (dst, src) in [(2 * i, i), (2 * i + 1, i + half)] {
                    let d = (h * headDim + dst) * cols, s = (h * headDim + src) * cols
                    out.replaceSubrange(d ..< d + cols, with: w[s ..< s + cols])
                }
            }
        }
        return out
    }
}
