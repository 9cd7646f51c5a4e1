// Shared by the commands: loading a model, JSON output, errors.
import Foundation
import Formats
import Models
import Tensors

/// A GGUF file, or a Hugging Face folder (config.json + safetensors).
func loadWeights(_ path: String) throws -> WeightSource {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw OffloadError("[model] \(path): no such file or folder")
    }
    if isDir.boolValue { throw OffloadError("[model] \(path): Hugging Face folders are not supported yet") }
    return try GGUFWeights(path: path)
}

func jsonString(_ obj: Any) throws -> String {
    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

func defaultThreads() -> Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }
