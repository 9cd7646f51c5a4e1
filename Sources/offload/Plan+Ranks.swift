// `offload plan --mode train --ranks N --zero S`: what each of N data-parallel ranks holds and moves per
// step, and the step it predicts: the chosen plan's step at the per-rank --batch (its compute scaled to the
// threads each rank gets), plus the gradient exchange at the profile's measured collective rate.

import Foundation
import Models
import Planning
import Runtime
import Tensors

struct RanksReport {
    var ranks: Int
    var zero: Int
    var parameterBytes: Int
    var wholeStateBytes: Int
    /// The largest rank's optimizer state (ZeRO 1: its shard of whole tensors).
    var stateBytesPerRank: Int
    /// The chosen plan's peak with the rank's state in place of the whole state.
    var peakPerRank: Int?
    /// Bytes a rank hands to the others per step: the gradients' reduce-scatter and the all-gather
    /// (of gradients, ZeRO 0, or of updated weights, ZeRO 1), (N−1)/N of the parameters each.
    var communicatedBytes: Int
    var computeSeconds: Double?
    var communicationSeconds: Double?
    var stepSeconds: Double? { computeSeconds.flatMap { c in communicationSeconds.map { c + $0 } } }

    /// - Parameter optimizerSecondsPerByte: the chain's update cost per parameter byte (ZeRO 1 updates a shard).
    init(config: LlamaConfig, ranks: Int, zero: Int, optimizer: OptimizerStateSize, chosen: PlanResult,
         hardware: HardwareProfile, threadsScale: Double, optimizerSecondsPerByte: Double) {
        self.ranks = ranks; self.zero = zero
        let layout = ParameterLayout(config: config)
        parameterBytes = layout.totalFloats * 4
        let whole = optimizer.bytes(config: config)
        let cut = DataParallel.cut(layout, into: ranks)
        let perRank = zero == 1
            ? cut.entries.map { s in layout.entries[s].reduce(0) { $0 + optimizer.bytes(count: $1.elements) } }.max() ?? 0
            : whole
        wholeStateBytes = whole; stateBytesPerRank = perRank
        peakPerRank = chosen.budgetedPeak.map { $0 - whole + perRank }
        let floats = layout.totalFloats
        let sent = 2 * 4 * (floats - floats / ranks)
        communicatedBytes = sent
        // ZeRO 1: a rank updates its shard only (the largest one bounds the step).
        let updated = zero == 1 ? cut.floats.map(\.count).max() ?? floats : floats
        let skipped = Double((floats - updated) * 4) * optimizerSecondsPerByte
        computeSeconds = chosen.simulation.map { ($0.stepSeconds - skipped) * threadsScale }
        // One all-to-all and one all-gather per round of 2^20 floats per rank (DataParallel.piece).
        let rounds = (floats / ranks + (1 << 20) - 1) / (1 << 20)
        communicationSeconds = hardware.collectives.map { $0.seconds(bytes: Double(sent), collectives: 2 * rounds + 2) }
    }

    var json: [String: Any] {
        var o: [String: Any] = ["ranks": ranks, "zero": zero, "parameterBytes": parameterBytes, "wholeStateBytes": wholeStateBytes,
                                "stateBytesPerRank": stateBytesPerRank, "communicatedBytesPerStep": communicatedBytes]
        if let peakPerRank { o["peakPerRank"] = peakPerRank }
        if let computeSeconds { o["computeSeconds"] = computeSeconds }
        if let communicationSeconds { o["communicationSeconds"] = communicationSeconds }
        if let stepSeconds { o["stepSeconds"] = stepSeconds }
        return o
    }

    func text(batch: Int) -> String {
        var lines = ["\(ranks) ranks, ZeRO \(zero), --batch \(batch) each (\(ranks * batch) windows a step):"]
        lines.append("  per rank: weights and gradients \(formatBytes(2 * parameterBytes)), optimizer state \(formatBytes(stateBytesPerRank))"
                     + (zero == 1 ? " (1/\(ranks) of \(formatBytes(wholeStateBytes)), whole tensors)" : " (all of it)")
                     + (peakPerRank.map { ", peak \(formatBytes($0))" } ?? ""))
        lines.append("  communicated per step and rank: \(formatBytes(communicatedBytes)) (2·(N−1)/N of the parameters: "
                     + (zero == 1 ? "reduce-scatter of gradients, all-gather of updated weights)" : "reduce-scatter and all-gather of gradients)"))
        if let c = computeSeconds {
            if let m = communicationSeconds {
                lines.append(String(format: "  predicted step %.3f s = compute %.3f s + communication %.3f s (the profile's collectives)",
                                    c + m, c, m))
            } else {
                lines.append(String(format: "  predicted compute %.3f s per step; communication not predicted: the profile has no "
                                    + "collectives (mpirun -np %d offload profile --collectives --out FILE, then --hardware FILE)", c, ranks))
            }
        }
        return lines.joined(separator: "\n")
    }
}
