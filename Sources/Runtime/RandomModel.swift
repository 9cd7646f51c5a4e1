// A Llama model of any built-in shape with random weights, written straight to a
// GGUF one tensor at a time: how a model larger than this machine's memory is made
// for planning, streaming and benchmarks. Not a training initialisation (that is
// TrainableLlama.random): weights are uniform with the standard deviation 0.02.

import Formats
import Foundation
import Kernels
import Models
import Tensors

public enum RandomModel {
    /// Writes `config` with random weights (norms 1) as GGUF at `path`, atomically,
    /// with a byte-level vocabulary; `progress(bytesWritten, totalBytes)` after each tensor. `alignment`:
    /// of every tensor's offset (4096 puts each merged expert's matrices on pages, for direct reads;
    /// llama-quantize, given such a file, writes one its own reader refuses).
    public static func writeGGUF(config c: LlamaConfig, to path: String, type: ExportType, seed: UInt64, alignment: Int = 32,
                                 progress: @escaping (Int, Int) -> Void = { _, _ in }) throws {
        try c.validate()
        var w = GGUFWriter()
        w.alignment = alignment
        try Checkpoint.llamaMetadata(c, fileType: type.fileType, byteVocabulary: true, into: &w)
        var rng = SeededGenerator(seed: seed)
        let specs = c.parameterTable
        var total = 0
        var dtypes: [DType] = []
        let tied = !specs.contains { $0.name == "output.weight" }
        for spec in specs {
            let dtype = type.dtype(tensor: spec.name, shape: spec.shape, layers: c.layers, tiedEmbeddings: tied,
                                   experts: c.moe?.experts ?? 0)
            dtypes.append(dtype)
            total += dtype.byteCount(elements: spec.elements)!
        }
        var done = 0
        for (spec, dtype) in zip(specs, dtypes) {
            let bytes = dtype.byteCount(elements: spec.elements)!
            w.tensors.append(.init(name: spec.name, dtype: dtype, shape: spec.shape) { h in
                if spec.shape.count == 1 {
                    try [Float](repeating: 1, count: spec.elements).withUnsafeBytes { try h.write(contentsOf: Data($0)) }
                } else {
                    // Whole rows per chunk (blocks never straddle a chunk), about 4M values; an
                    // expert tensor [experts, rows, cols] is experts × rows rows.
                    let cols = spec.shape.last!, rows = spec.elements / cols, rowsPerChunk = max(1, (4 << 20) / cols)
                    var values = [Float](repeating: 0, count: rowsPerChunk * cols)
                    let scale = Float(0.02 * 3.0.squareRoot()) / Float(1 << 23)
                    for r0 in stride(from: 0, to: rows, by: rowsPerChunk) {
                        let n = min(rowsPerChunk, rows - r0) * cols
                        for i in 0..<n { values[i] = Float(Int64(rng.next() >> 40) - (1 << 23)) * scale }
                        let chunk = Array(values[0..<n])
                        try h.write(contentsOf: Data(try Quantize.rows(chunk, to: dtype, cols: cols)))
                    }
                }
                done += bytes
                progress(done, total)
            })
        }
        try w.write(to: path)
    }
}
