// The plan table's lines: one header and one row per plan, printed by `offload plan`
// for every candidate and by `train` / `generate` for the plan they run.
import Foundation
import Memory
import Models
import Planning
import Tensors

enum PlanTable {
    static func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
    static func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }

    /// `ram`: a CPU-only machine, where one RAM budget covers compute and host memory.
    static func header(ram: Bool, stepLabel: String = "step") -> String {
        "  " + pad("strategy", 20) + lpad(stepLabel, 11) + (ram ? lpad("RAM peak", 14) : lpad("compute peak", 14) + lpad("host peak", 12))
            + lpad("disk peak", 12) + lpad("moved", 12) + lpad("recompute", 11) + lpad("idle", 10) + lpad("plan", 9)
    }

    /// One plan's figures as the table shows them; `failure` when it does not fit.
    struct Row {
        var name: String
        var failure: String?
        var seconds = 0.0, peak = 0, hostPeak = 0, diskPeak = 0, moved = 0
        var recomputeShare = 0.0, idle = 0.0, planning = 0.0
    }

    static func figures(_ p: PlanResult, ram: Bool) -> Row {
        guard let s = p.simulation, p.fits else { return Row(name: p.name, failure: p.failure ?? "?") }
        return Row(name: p.name, failure: nil, seconds: s.stepSeconds,
                   peak: p.budgetedPeak ?? (ram ? s.combinedPeak([.compute, .host]) : s.peak[.compute] ?? 0),
                   hostPeak: s.peak[.host] ?? 0, diskPeak: s.peak[.disk] ?? 0, moved: s.totalBytesMoved,
                   recomputeShare: s.recomputeSeconds / max(1e-12, s.computeSeconds - s.recomputeSeconds),
                   idle: s.computeIdleSeconds, planning: p.planningSeconds)
    }

    static func row(_ p: PlanResult, chosen: Bool, ram: Bool) -> String { row(figures(p, ram: ram), chosen: chosen, ram: ram) }

    static func row(_ r: Row, chosen: Bool, ram: Bool) -> String {
        let mark = chosen ? "* " : "  "
        if let failure = r.failure {
            return mark + r.name + (r.name.count < 20 ? String(repeating: " ", count: 20 - r.name.count) : "")
                + "  does not fit: " + TrainingPlanner.plain(failure)
        }
        return mark + pad(r.name, 20) + lpad(String(format: "%.3f s", r.seconds), 11) + lpad(formatBytes(r.peak), 14)
            + (ram ? "" : lpad(formatBytes(r.hostPeak), 12))
            + lpad(formatBytes(r.diskPeak), 12) + lpad(formatBytes(r.moved), 12)
            + lpad(String(format: "%.1f%%", 100 * r.recomputeShare), 11)
            + lpad(String(format: "%.3f s", r.idle), 10) + lpad(String(format: "%.2f s", r.planning), 9)
    }
}

/// What `train` prints before its first step: the row `offload plan` prints for the plan it runs.
func printPlanRow(_ p: PlanResult, budget: Int, hardware: HardwareProfile) {
    printPlanRow(PlanTable.figures(p, ram: hardware.hostIsCompute), budget: budget, hardware: hardware)
}

func printPlanRow(_ r: PlanTable.Row, budget: Int, hardware: HardwareProfile, stepLabel: String = "step") {
    note("plan under a RAM budget of \(formatBytes(budget)) (hardware \(hardware.name)), as `offload plan` predicts it:")
    note(PlanTable.header(ram: hardware.hostIsCompute, stepLabel: stepLabel))
    note(PlanTable.row(r, chosen: true, ram: hardware.hostIsCompute))
}

/// A streamed generation plan as a table row: seconds per decoded token, the compute tier's bytes,
/// the KV cache's bytes on disk, bytes read per token.
func generationRow(_ p: StreamingPlan, config c: LlamaConfig, hardware hw: HardwareProfile, planning: Double = 0) -> PlanTable.Row {
    let seconds = p.predictedDecodeSeconds(hardware: hw, config: c)
    let compute = Double(p.sequences) * Double(p.stages.reduce(0) { $0 + $1.weightBytes }) / hw.decodeBytesPerSecond
    return PlanTable.Row(name: p.streamed.isEmpty ? "resident" : "stream", failure: nil, seconds: seconds / Double(p.sequences),
                         peak: p.plannedBytes, diskPeak: p.kvDiskBytes(config: c),
                         moved: p.bytesReadPerStep(config: c) / p.sequences, idle: max(0, seconds - compute) / Double(p.sequences),
                         planning: planning)
}
