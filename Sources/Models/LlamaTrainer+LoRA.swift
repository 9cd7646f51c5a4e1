// What the trainer's block functions see of a block's weights (trained fp32, or
// frozen in the file's type with a LoRA adapter), and the buffers LoRA training
// adds: each adapter's saved A·x per block (rank floats per row), the backward's
// scratch, the frozen products' dequantization tile and the head's dequantized rows.

import Kernels
import Tensors

/// A projection as the block functions see it.
enum Linear {
    /// Trained in fp32: the weight and its gradient.
    case trained(UnsafePointer<Float>, UnsafeMutablePointer<Float>)
    /// Frozen in the file's type, with its adapter (if targeted), where the adapter's A·x is kept, and
    /// the dropout mask on the adapter's input (training with --lora-dropout).
    case frozen(WeightMatrix, LoRAPair?, saved: UnsafeMutablePointer<Float>?, dropout: DropoutMask?)

    var isFrozen: Bool { if case .frozen = self { true } else { false } }
}

struct BlockWeights {
    var attnNorm, ffnNorm: UnsafePointer<Float>
    var attnNormGradient, ffnNormGradient: UnsafeMutablePointer<Float>
    var q, k, v, o, gate, up, down: Linear
}

/// A LoRA trainer's frozen base, adapters and buffers (one allocation).
public final class LoRABinding {
    public let base: FrozenLlama
    public let adapters: LoRAAdapters
    let buffer: FloatBuffer
    /// saved[l][t]: (N, rank) A·x of target t in block l.
    let saved: [[LoRATarget: UnsafeMutablePointer<Float>]]
    let dsaved, tile, headRows, normGradientSink: UnsafeMutablePointer<Float>
    /// Dropout: an adapter's input after the mask, and the gradient before it (N × the widest input each).
    let dropped, droppedGradient: UnsafeMutablePointer<Float>
    /// The seed of the dropout masks (the run's), and the index of the micro-batch being trained
    /// (nil outside `forwardBackward`: no dropout).
    public var dropoutSeed: UInt64 = 0
    var dropoutDraw: UInt64?

    /// Floats of the buffer for N = batch × seqLen rows and `headChunkRows` head rows per chunk.
    static func floats(base: FrozenLlama, adapters: LoRAAdapters, rows n: Int, headChunkRows: Int) -> [Int] {
        let c = base.config, r = adapters.settings.rank, targets = adapters.settings.targets.count
        let widest = adapters.settings.dropout > 0 ? n * adapters.settings.targets.map { $0.shape(c).in }.max()! : 0
        return [c.layers * targets * n * r, n * r, max(base.scratchFloats, 1), headChunkRows * c.dim, c.dim, widest, widest]
    }

    init(base: FrozenLlama, adapters: LoRAAdapters, rows n: Int, headChunkRows: Int) {
        self.base = base; self.adapters = adapters
        let sizes = Self.floats(base: base, adapters: adapters, rows: n, headChunkRows: headChunkRows)
        func pad(_ x: Int) -> Int { (x + 15) / 16 * 16 }
        let buffer = FloatBuffer(count: sizes.map(pad).reduce(0, +))
        self.buffer = buffer
        var offset = 0
        func take(_ floats: Int) -> UnsafeMutablePointer<Float> { defer { offset += pad(floats) }; return buffer.base + offset }
        let r = adapters.settings.rank
        let all = take(sizes[0])
        var k = 0
        saved = (0..<base.config.layers).map { _ in
            Dictionary(uniqueKeysWithValues: adapters.settings.targets.map { t in
                defer { k += 1 }
                return (t, all + k * n * r)
            })
        }
        dsaved = take(sizes[1]); tile = take(sizes[2]); headRows = take(sizes[3]); normGradientSink = take(sizes[4])
        dropped = take(sizes[5]); droppedGradient = take(sizes[6])
    }

    var bytes: Int { buffer.bytes }

    /// The dropout mask of target `t` in block `l` for the micro-batch being trained, if any.
    func dropoutMask(_ l: Int, _ t: LoRATarget) -> DropoutMask? {
        let p = adapters.settings.dropout
        guard p > 0, let draw = dropoutDraw else { return nil }
        return DropoutMask(p: p, seed: dropoutSeed, draw: draw, layer: l, target: t)
    }
}
