// Bytes a model needs to run and to train, with everything in compute memory.
// The planner refines these per stage; this is the headline `offload inspect` prints.

public struct MemoryEstimate: Sendable, Codable, Equatable {
    /// Weights as stored (quantized types keep their size).
    public var weightBytes: Int
    /// fp32 KV cache for batch × seqLen positions.
    public var kvCacheBytes: Int
    /// Activations of one forward pass at batch × seqLen (inference: one layer at a time).
    public var inferenceActivationBytes: Int
    /// fp32 weights, gradients and the two AdamW moments: 16 bytes per parameter.
    public var trainingStateBytes: Int
    /// Activations saved for backward across all layers (`BlockActivations`: the feed-forward's
    /// intermediates only when it runs whole), plus logits and their gradient.
    public var trainingActivationBytes: Int

    public var inferenceBytes: Int { weightBytes + kvCacheBytes + inferenceActivationBytes }
    public var trainingBytes: Int { trainingStateBytes + trainingActivationBytes }
}

extension LlamaConfig {

    public func memoryEstimate(weightBytes: Int, batch: Int, seqLen: Int) -> MemoryEstimate {
        let tokens = batch * seqLen
        let kv = 2 * layers * tokens * kvDim * 4
        let perLayer = tokens * (2 * dim + qDim + 2 * kvDim + heads + 2 * ffnDim) * 4
        let logits = tokens * vocabSize * 4
        return MemoryEstimate(
            weightBytes: weightBytes, kvCacheBytes: kv,
            inferenceActivationBytes: perLayer + logits,
            trainingStateBytes: 16 * parameterCount,
            trainingActivationBytes: layers * BlockActivations.floats(config: self, batch: batch, seqLen: seqLen) * 4
                + 2 * logits)
    }
}
