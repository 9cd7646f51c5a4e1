// LoRA checkpoints: the folder is a peft adapter (adapter_config.json and
// adapter_model.safetensors, which peft's PeftModel.from_pretrained loads onto the
// Hugging Face model) plus Offload's optimizer.safetensors and trainer.json, so the
// same folder resumes a run bit for bit and is handed to peft as it is.

import Foundation
import Models
import Tensors

extension Checkpoint {
    static func saveLoRA(_ session: TrainingSession, adapters: LoRAAdapters, state: OptimizerState, to dir: String,
                         sourceModel: String?, lastLoss: Float?) throws {
        try save(to: dir, model: session.model, options: session.options, step: session.step, nextBatch: session.nextBatch,
                 data: session.data, optimizer: session.optimizer.name, sourceModel: sourceModel, lastLoss: lastLoss,
                 weightsName: LoRAAdapters.weightsFile,
                 otherFiles: [(LoRAAdapters.configFile, adapters.peftConfigJSON(baseModel: sourceModel))],
                 weights: { path in try writeAdapter(adapters, to: path) },
                 optimizerState: { try writeCheckpointTensors(stateTensors(state), to: $0) })
    }

    /// Writes `adapters` as peft's adapter_model.safetensors (F32, peft's names and row order).
    public static func writeAdapter(_ adapters: LoRAAdapters, to path: String) throws -> (bytes: Int, checksum: String) {
        let entries = adapters.layout.entries
        return try writeCheckpointTensors(entries.map { (LoRAAdapters.peftName($0.name)!, $0.spec.shape) },
                                          metadata: ["format": "pt"], to: path) { put in
            for e in entries { try adapters.peftValues(e).withUnsafeBytes { try put($0) } }
        }
    }

    /// The adapters of a LoRA checkpoint (file size and checksum checked against trainer.json).
    public static func loadAdapters(_ dir: String, info: CheckpointInfo) throws -> LoRAAdapters {
        guard let settings = info.options.lora else { throw OffloadError("[checkpoint] \(dir): not a LoRA checkpoint") }
        let rec = info.files[LoRAAdapters.weightsFile]
        _ = try CheckpointFileReader(path: dir + "/" + LoRAAdapters.weightsFile, expectBytes: rec?.bytes,
                                     expectChecksum: rec?.checksum)
        let a = try LoRAAdapters.load(folder: dir, config: info.config, ropeStyle: info.ropeStyle)
        guard a.settings == settings else {
            throw OffloadError("[checkpoint] \(dir): \(LoRAAdapters.configFile) does not match trainer.json's LoRA settings")
        }
        return a
    }
}
