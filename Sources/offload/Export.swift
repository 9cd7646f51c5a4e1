// `offload export`: a training checkpoint as a GGUF file for `offload generate` and llama.cpp.
import ArgumentParser
import Foundation
import Runtime
import Tensors

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a training checkpoint as a GGUF model.",
        discussion: "Example: offload export --checkpoint run1 --out run1.gguf --type q8_0")

    @Option(help: "A checkpoint folder written by `offload train --save`.") var checkpoint: String
    @Option(help: "The GGUF file to write (atomically).") var out: String
    @Option(help: "Type of the weight matrices: f32, f16 or q8_0 (norms stay f32).") var type: String = "f32"

    func validate() throws {
        if ExportType(rawValue: type.lowercased()) == nil { throw ValidationError("--type must be f32, f16 or q8_0, got '\(type)'") }
    }

    func run() throws {
        do {
            try Checkpoint.exportGGUF(checkpoint, to: out, type: ExportType(rawValue: type.lowercased())!)
            FileHandle.standardError.write(Data("exported \(checkpoint) to \(out) (\(type))\n".utf8))
        } catch let e as OffloadError {
            FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
            throw ExitCode.failure
        }
    }
}
