// `offload init`: a model file of a built-in shape with random weights.
import ArgumentParser
import Foundation
import Models
import Runtime
import Tensors

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model of a built-in shape with random weights as GGUF.",
        discussion: """
        For planning, streaming and benchmarks with models of any size, including ones larger \
        than this machine's memory: tensors are generated and written one at a time. The file \
        has a byte-level vocabulary (prompt it with text or --prompt-tokens). A mixture of experts \
        (small-moe, mixtral-8x7b) is written in llama.cpp's merged expert layout, every tensor on a \
        4096-byte boundary, for `generate --budget` to read experts with direct I/O.
        Example: offload init --config llama-3-8b --type f32 --out /data/llama-3-8b-random.gguf
        """)

    @Option(help: "Built-in shape: \(LlamaConfig.builtIn.map(\.name).joined(separator: ", ")).") var config: String
    @Option(help: "The GGUF file to write (atomically).") var out: String
    @Option(help: "Type of the file: \(ExportType.names) (llama-quantize's mixes; norms stay f32).") var type = "f16"
    @Option(help: "Seed of the random weights.") var seed: UInt64 = 0

    func validate() throws {
        guard ExportType(rawValue: type) != nil else {
            throw ValidationError("--type must be one of \(ExportType.names), got '\(type)'")
        }
    }

    func run() throws {
        let c = try LlamaConfig.named(config)
        let tty = isatty(2) != 0
        let start = Date()
        // A mixture of experts is written for expert offloading: every expert on a page boundary.
        try RandomModel.writeGGUF(config: c, to: out, type: ExportType(rawValue: type)!, seed: seed,
                                  alignment: c.isMoE ? 4096 : 32) { done, total in
            guard tty || done == total else { return }
            let line = String(format: "\r[init] %@ of %@ (%.0f%%)", formatBytes(done), formatBytes(total),
                              100 * Double(done) / Double(total))
            FileHandle.standardError.write(Data(line.utf8))
        }
        FileHandle.standardError.write(Data(String(format: "\n[init] wrote %@ (%@ parameters, %@) in %.1f s\n",
                                                   out, formatCount(c.parameterCount), type,
                                                   Date().timeIntervalSince(start)).utf8))
    }
}
