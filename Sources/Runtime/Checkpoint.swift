// Training checkpoints: a folder with the weights (model.safetensors, GGUF
// tensor names), the optimizer state (optimizer.safetensors, "<name>.m" ...),
// and trainer.json (config, options, step, data position, shuffle RNG state,
// each file's size and checksum). Written to a temporary folder and swapped into
// place, so a crash leaves the previous checkpoint whole (invariant 5).

import Foundation
import Kernels
import Models
import Tensors

public struct CheckpointInfo: Codable, Equatable, Sendable {
    public struct FileRecord: Codable, Equatable, Sendable {
        public var bytes: Int
        public var checksum: String
    }
    public static let formatName = "offload-training-checkpoint"
    public var format = CheckpointInfo.formatName
    public var version = 1
    public var config: LlamaConfig
    public var ropeStyle: RopeStyle
    /// The model file training started from (its tokenizer and metadata serve `export`), if any.
    public var sourceModel: String?
    public var options: TrainingOptions
    /// Optimizer steps completed.
    public var step: Int
    /// Data position: micro-batches consumed.
    public var nextBatch: Int
    /// Shuffle RNG state: the permutation of epoch `epoch` is drawn from (shuffleSeed, epoch).
    public var epoch: Int
    public var shuffleSeed: UInt64?
    public var dataTokens: Int
    public var dataChecksum: String
    public var optimizer: String
    public var lastLoss: Float?
    /// Compute threads of the run: OpenBLAS's sums depend on it, so a bit-identical resume needs the same.
    public var threads: Int?
    public var files: [String: FileRecord]
}

public enum Checkpoint {
    static let weightsFile = "model.safetensors"
    static let optimizerFile = "optimizer.safetensors"
    static let infoFile = "trainer.json"

    static func weightTensors(_ m: TrainableLlama) -> [CheckpointTensor] {
        m.layout.entries.map { CheckpointTensor(name: $0.name, shape: $0.spec.shape, data: m.weights.base + $0.offset) }
    }

    /// "<parameter>.<buffer>" for every optimizer-state buffer (per-weight buffers shaped like their
    /// parameter), buffer name by buffer name: every .m, then every .v, ...
    static func stateTensors(_ s: OptimizerState) -> [CheckpointTensor] {
        s.buffersByName.map { entry, slot, address in
            let e = s.layout.entries[entry], b = slot.buffer
            return CheckpointTensor(name: "\(e.name).\(b.name)", shape: b.perWeight ? e.spec.shape : [b.count],
                                    bytes: address, element: b.element)
        }
    }

    public static func dataChecksum(_ tokens: [Int]) -> String {
        var sum = Checksum64()
        tokens.map { Int64($0).littleEndian }.withUnsafeBytes { sum.update($0) }
        return sum.hex
    }

    /// Saves `session` to `dir` atomically: a temporary sibling folder, then a swap.
    public static func save(_ session: TrainingSession, to dir: String, sourceModel: String? = nil,
                            lastLoss: Float? = nil) throws {
        // Several ranks: all take part (ZeRO 1 gathers the state), rank 0 writes.
        guard let state = session.checkpointState() else { return }
        if let lora = session.trainer.lora {
            try saveLoRA(session, adapters: lora.adapters, state: state, to: dir, sourceModel: sourceModel, lastLoss: lastLoss)
            return
        }
        try save(to: dir, model: session.model, options: session.options, step: session.step, nextBatch: session.nextBatch,
                 data: session.data, optimizer: session.optimizer.name, sourceModel: sourceModel, lastLoss: lastLoss,
                 weights: { try writeCheckpointTensors(weightTensors(session.model), metadata: ["format": "pt"], to: $0) },
                 optimizerState: { try writeCheckpointTensors(stateTensors(state), to: $0) })
    }

    /// The (name, shape) of every weight, in file order.
    static func weightSpecs(_ layout: ParameterLayout) -> [(name: String, shape: [Int])] {
        layout.entries.map { ($0.name, $0.spec.shape) }
    }

    /// The (name, shape) of every optimizer-state tensor, in file order: role by role.
    static func stateSpecs(_ layout: ParameterLayout, roles: [String]) -> [(name: String, shape: [Int])] {
        roles.flatMap { role in layout.entries.map { ("\($0.name).\(role)", $0.spec.shape) } }
    }

    /// Writes a checkpoint folder atomically: `weights` and `optimizerState` write their files at
    /// the paths given and return (bytes, checksum); then trainer.json; then the swap into place.
    static func save(to dir: String, model: TrainableLlama, options: TrainingOptions, step: Int, nextBatch: Int,
                     data: TokenWindows, optimizer: String, sourceModel: String?, lastLoss: Float?,
                     weightsName: String = weightsFile, otherFiles: [(name: String, data: Data)] = [],
                     weights: (String) throws -> (bytes: Int, checksum: String),
                     optimizerState: (String) throws -> (bytes: Int, checksum: String)) throws {
        let url = URL(fileURLWithPath: dir).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        let fm = FileManager.default
        try? fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let tmp = parent + "/.\(url.lastPathComponent).tmp-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        removeStaleTemporaries(of: url.path)
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
        } catch {
            throw OffloadError("[checkpoint] \(dir): cannot create \(tmp): \(error.localizedDescription)")
        }
        do {
            for f in otherFiles { try f.data.write(to: URL(fileURLWithPath: tmp + "/" + f.name)) }
            let w = try weights(tmp + "/" + weightsName)
            let o = try optimizerState(tmp + "/" + optimizerFile)
            let info = CheckpointInfo(
                config: model.config, ropeStyle: model.ropeStyle, sourceModel: sourceModel,
                options: options, step: step, nextBatch: nextBatch,
                epoch: nextBatch * options.batch / data.windowCount, shuffleSeed: data.shuffleSeed,
                dataTokens: data.tokens.count, dataChecksum: dataChecksum(data.tokens),
                optimizer: optimizer, lastLoss: lastLoss, threads: TrainingThreads.count,
                files: [weightsName: .init(bytes: w.bytes, checksum: w.checksum),
                        optimizerFile: .init(bytes: o.bytes, checksum: o.checksum)])
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(info).write(to: URL(fileURLWithPath: tmp + "/" + infoFile))
            try swapIntoPlace(tmp, url.path)
        } catch {
            try? fm.removeItem(atPath: tmp)
            if let e = error as? OffloadError { throw e }
            throw OffloadError("[checkpoint] \(dir): \(error.localizedDescription)")
        }
    }

    /// Removes the `.NAME.tmp-PID` folders that saves killed part-way (SIGKILL, power loss) left beside
    /// checkpoint `dir`, once their process is gone. Only while `dir` itself is in place: without it a
    /// temporary folder may be the newest whole checkpoint. `.old-` folders are never touched.
    static func removeStaleTemporaries(of dir: String) {
        let fm = FileManager.default
        let url = URL(fileURLWithPath: dir)
        let parent = url.deletingLastPathComponent().path
        let prefix = ".\(url.lastPathComponent).tmp-"
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue,
              let entries = try? fm.contentsOfDirectory(atPath: parent) else { return }
        for entry in entries where entry.hasPrefix(prefix) {
            guard let pid = Int32(entry.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            try? fm.removeItem(atPath: parent + "/" + entry)
        }
    }

    /// Moves folder `tmp` to `dir`. An existing `dir` is exchanged atomically (renameat2) and then removed.
    static func swapIntoPlace(_ tmp: String, _ dir: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if !fm.fileExists(atPath: dir, isDirectory: &isDir) {
            guard rename(tmp, dir) == 0 else {
                throw OffloadError("[checkpoint] \(dir): cannot rename into place: \(String(cString: strerror(errno)))")
            }
            return
        }
        guard isDir.boolValue else { throw OffloadError("[checkpoint] \(dir) exists and is not a folder") }
        if let exchange = renameat2, exchange(AT_FDCWD, tmp, AT_FDCWD, dir, 2 /* RENAME_EXCHANGE */) == 0 {
            try? fm.removeItem(atPath: tmp)   // now holds the previous checkpoint
            return
        }
        // No RENAME_EXCHANGE (old kernel or file system): two renames; a crash between them leaves `.old`.
        let old = tmp.replacingOccurrences(of: ".tmp-", with: ".old-")
        try? fm.removeItem(atPath: old)
        guard rename(dir, old) == 0, rename(tmp, dir) == 0 else {
            throw OffloadError("[checkpoint] \(dir): cannot rename into place: \(String(cString: strerror(errno)))")
        }
        try? fm.removeItem(atPath: old)
    }

    private typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    private static let renameat2: RenameAt2? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "renameat2") else { return nil }
        return unsafeBitCast(sym, to: RenameAt2.self)
    }()

    /// Reads and checks `dir/trainer.json`.
    public static func readInfo(_ dir: String) throws -> CheckpointInfo {
        let path = dir + "/" + infoFile
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw OffloadError("[checkpoint] \(dir): no such checkpoint folder")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[checkpoint] \(dir): \(infoFile) is missing; this is not an Offload training checkpoint")
        }
        let info: CheckpointInfo
        do { info = try JSONDecoder().decode(CheckpointInfo.self, from: data) } catch {
            throw OffloadError("[checkpoint] \(path): unreadable (corrupted?): \(error)")
        }
        guard info.format == CheckpointInfo.formatName, info.version == 1 else {
            throw OffloadError("[checkpoint] \(path): format \(info.format) v\(info.version) is not supported")
        }
        try info.config.validate()
        return info
    }

    /// A model with the checkpoint's weights (checked against the recorded size and checksum).
    public static func loadModel(_ dir: String, info: CheckpointInfo, gradients: Bool = true) throws -> TrainableLlama {
        let m = try TrainableLlama(config: info.config, ropeStyle: info.ropeStyle, gradients: gradients)
        let rec = info.files[weightsFile]
        try readCheckpointTensors(weightTensors(m), from: dir + "/" + weightsFile,
                                  expectBytes: rec?.bytes, expectChecksum: rec?.checksum)
        return m
    }

    /// Restores the optimizer state and step of `session` (whose model came from `loadModel`).
    public static func restoreOptimizer(_ dir: String, info: CheckpointInfo, into session: TrainingSession) throws {
        guard info.optimizer == session.optimizer.name else {
            throw OffloadError("[checkpoint] \(dir): optimizer state is for \(info.optimizer), not \(session.optimizer.name)")
        }
        let rec = info.files[optimizerFile]
        try readCheckpointTensors(stateTensors(session.optimizerState), from: dir + "/" + optimizerFile,
                                  expectBytes: rec?.bytes, expectChecksum: rec?.checksum)
        session.optimizerState.step = info.step
    }

    /// Checks that a checkpoint belongs to the model `config` describes.
    public static func checkSameModel(_ info: CheckpointInfo, _ config: LlamaConfig, dir: String) throws {
        guard info.config == config else {
            func describe(_ c: LlamaConfig) -> String {
                "'\(c.name)' (vocab \(c.vocabSize), dim \(c.dim), ffn \(c.ffnDim), \(c.layers) layers, "
                    + "\(c.heads)/\(c.kvHeads) heads\(c.tiedEmbeddings ? ", tied" : ""))"
            }
            throw OffloadError("[checkpoint] \(dir) holds model \(describe(info.config)), not \(describe(config)); "
                               + "resume with the model it was trained from")
        }
    }
}
