// Shared by the commands: loading a model, JSON output, errors.
import Foundation
import Formats
import Models
import Tensors

/// A GGUF file, or a Hugging Face folder (config.json + safetensors). With
/// `sha256`, a file must have that digest before anything else is read.
func loadWeights(_ path: String, sha256: String? = nil) throws -> WeightSource {
    if try checkModelPath(path, sha256: sha256) { return try HFCheckpoint(folder: path) }
    return try GGUFWeights(path: path)
}

/// Checks that `path` exists and, when `sha256` is given, that it is a file with that digest.
/// Returns whether it is a folder.
func checkModelPath(_ path: String, sha256: String?) throws -> Bool {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw OffloadError("[model] \(path): no such file or folder")
    }
    if let want = sha256?.lowercased() {
        guard !isDir.boolValue else { throw OffloadError("[model] \(path): --sha256 needs a file, not a folder") }
        let got = try sha256Hex(ofFile: path)
        guard got == want else {
            throw OffloadError("[model] \((path as NSString).lastPathComponent): sha256 mismatch: expected \(want), found \(got)")
        }
    }
    return isDir.boolValue
}

func jsonString(_ obj: Any) throws -> String {
    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

func defaultThreads() -> Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }
