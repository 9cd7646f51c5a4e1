// `plan`: how the smallest budget and the predicted times grow with the context (generate) or the
// sequence length (train), as a table, JSON rows and a chart under the schedule in the SVG.
import Foundation
import Models
import Planning
import Tensors

struct GrowthRow {
    var context: Int
    var promptTokens: Int
    var minimumBudget: Int?
    /// At the budget asked for (nil: it does not fit there).
    var prefillSeconds: Double?
    var secondsPerToken: Double?

    var json: [String: Any] {
        var out: [String: Any] = ["context": context, "promptTokens": promptTokens]
        if let m = minimumBudget { out["minimumBudget"] = m }
        if let p = prefillSeconds { out["prefillSeconds"] = p }
        if let s = secondsPerToken { out["secondsPerToken"] = s }
        return out
    }

    var point: GrowthPoint { GrowthPoint(length: context, minimumBudget: minimumBudget, seconds: prefillSeconds) }
}

/// One length of a growth chart: the least budget there and the predicted seconds at the asked budget.
struct GrowthPoint {
    var length: Int
    var minimumBudget: Int?
    var seconds: Double?
}

/// Lengths from 512 doubling up to `limit`, with `limit` and `asked`.
func growthLengths(asked: Int, limit: Int) -> [Int] {
    var lengths: Set<Int> = [asked, limit]
    var n = 512
    while n < limit { lengths.insert(n); n *= 2 }
    return lengths.sorted()
}

struct TrainGrowthRow {
    var seqLen: Int
    var minimumBudget: Int?
    /// The plan `train` runs at the least budget.
    var minimumPlan: String?
    /// At the budget asked for (nil: nothing fits there).
    var plan: String?
    var stepSeconds: Double?

    var json: [String: Any] {
        var out: [String: Any] = ["seqLen": seqLen]
        if let m = minimumBudget { out["minimumBudget"] = m }
        if let p = minimumPlan { out["minimumBudgetPlan"] = p }
        if let p = plan { out["plan"] = p }
        if let s = stepSeconds { out["stepSeconds"] = s }
        return out
    }

    var point: GrowthPoint { GrowthPoint(length: seqLen, minimumBudget: minimumBudget, seconds: stepSeconds) }
}

/// `r` at sequence lengths from 512 doubling up to the model's context (at most 8,192 or `r.seqLen`),
/// and `r.seqLen` (`asked`, already planned): the least budget and its plan, and, up to `r.seqLen`,
/// the plan `train` runs at `r.budget` with its predicted step (simulating a longer step than the
/// one asked for would cost more than planning it).
func trainGrowthRows(_ r: TrainingPlanRequest, asked: TrainGrowthRow) -> [TrainGrowthRow] {
    growthLengths(asked: r.seqLen, limit: min(r.config.contextLength, max(r.seqLen, 8192))).map { T in
        if T == r.seqLen { return asked }
        var q = r
        q.seqLen = T
        var row = TrainGrowthRow(seqLen: T)
        if let least = TrainingPlanner.smallestBudget(q) { (row.minimumBudget, row.minimumPlan) = (least.bytes, least.name) }
        if T <= r.seqLen, let placement = try? TrainingPlanner.choose(q) {
            let result = TrainingPlanner.row(for: placement, hardware: r.hardware)
            row.plan = result.name
            row.stepSeconds = result.simulation?.stepSeconds
        }
        return row
    }
}

/// Rows longer than `asked` have no step (`trainGrowthRows`).
func trainGrowthTable(_ rows: [TrainGrowthRow], asked: Int, budget: Int?) -> String {
    var s = "how it grows with the sequence length (step and plan \(budget.map { "at " + formatBytes($0) } ?? "unlimited")):\n"
    s += "  seq-len   least budget   plan there          step (s)   plan\n"
    for r in rows {
        s += "  " + "\(r.seqLen)".leftPad(7) + "  " + (r.minimumBudget.map(formatBytes) ?? "-").leftPad(13)
            + "   " + (r.minimumPlan ?? "-").padding(toLength: 16, withPad: " ", startingAt: 0)
            + (r.stepSeconds.map { String(format: "%.3f", $0) } ?? (r.seqLen > asked ? "-" : "does not fit")).leftPad(12)
            + "   " + (r.plan ?? "-") + "\n"
    }
    return s
}

/// Contexts from 512 doubling up to the model's, and `asked`; each with a prompt that leaves as many
/// tokens to generate as `asked` leaves after `promptTokens`.
func growthRows(stages: [WeightStage], config c: LlamaConfig, asked: Int, promptTokens: Int, budget: Int,
                prefillChunk: Int?, hardware hw: HardwareProfile) -> [GrowthRow] {
    let generated = asked - promptTokens
    return growthLengths(asked: asked, limit: c.contextLength).compactMap { context in
        let prompt = context - generated
        guard prompt >= 1 else { return nil }
        var row = GrowthRow(context: context, promptTokens: prompt)
        func plan(_ budget: Int) -> StreamingPlan? {
            try? StreamingPlan(budget: budget, stages: stages, config: c, promptTokens: prompt, contextCapacity: context,
                               prefillChunk: prefillChunk, hardware: hw)
        }
        // A plan's minimum does not depend on its budget: the unlimited one only when the budget does not fit.
        if let p = plan(budget) {
            row.minimumBudget = p.minimumBudget
            row.prefillSeconds = p.predictedPrefillSeconds(hardware: hw, config: c)
            row.secondsPerToken = p.predictedDecodeSeconds(hardware: hw, config: c)
        } else {
            row.minimumBudget = plan(Int.max / 4)?.minimumBudget
        }
        return row
    }
}

func growthTable(_ rows: [GrowthRow]) -> String {
    var s = "how it grows with the context (the same tokens generated):\n"
    s += "  context   prompt   least budget   prefill (s)   decode (s/token)\n"
    for r in rows {
        s += "  " + "\(r.context)".leftPad(7) + "  " + "\(r.promptTokens)".leftPad(7)
            + "  " + (r.minimumBudget.map(formatBytes) ?? "-").leftPad(13)
            + "  " + (r.prefillSeconds.map { String(format: "%.2f", $0) } ?? "does not fit").leftPad(12)
            + "  " + (r.secondsPerToken.map { String(format: "%.3f", $0) } ?? "-").leftPad(17) + "\n"
    }
    return s
}

/// A chart of the least budget (and the predicted seconds, `timed`, where it fits) against the
/// length (`axis`), on a log2 axis, `width` wide.
func growthSVG(_ points: [GrowthPoint], axis: String, timed what: String, width: Double) -> (body: String, height: Double) {
    let height = 220.0, left = 70.0, right = 70.0, top = 30.0, bottom = 40.0
    let pts = points.filter { $0.minimumBudget != nil }
    guard pts.count >= 2, let lo = pts.first?.length, let hi = pts.last?.length, hi > lo else { return ("", 0) }
    let maxBytes = Double(pts.map { $0.minimumBudget! }.max()!) * 1.1
    let maxSeconds = max(pts.compactMap(\.seconds).max() ?? 1, 1e-9) * 1.1
    func x(_ n: Int) -> Double { left + (log2(Double(n)) - log2(Double(lo))) / (log2(Double(hi)) - log2(Double(lo))) * (width - left - right) }
    func y(_ v: Double, _ top_: Double) -> Double { top + (1 - v / top_) * (height - top - bottom) }
    var s = "<text x=\"\(left)\" y=\"18\" font-weight=\"bold\">least budget (blue, left) and \(what) (orange, right) by \(axis)</text>\n"
    s += "<line x1=\"\(left)\" y1=\"\(height - bottom)\" x2=\"\(width - right)\" y2=\"\(height - bottom)\" stroke=\"#888\"/>\n"
    for r in pts {
        s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x(r.length), height - bottom + 15, r.length)
    }
    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#1f77b4\">%@</text>\n", 4.0, top + 4, formatBytes(Int(maxBytes)))
    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#ff7f0e\">%.1f s</text>\n", width - right + 4, top + 4, maxSeconds)
    let budgetLine = pts.map { String(format: "%.1f,%.1f", x($0.length), y(Double($0.minimumBudget!), maxBytes)) }
    s += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"\(budgetLine.joined(separator: " "))\"/>\n"
    for r in pts {
        s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#1f77b4\"><title>%d: %@</title></circle>\n",
                    x(r.length), y(Double(r.minimumBudget!), maxBytes), r.length, formatBytes(r.minimumBudget!))
    }
    let timed = pts.filter { $0.seconds != nil }
    if timed.count >= 2 {
        let line = timed.map { String(format: "%.1f,%.1f", x($0.length), y($0.seconds!, maxSeconds)) }
        s += "<polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\"\(line.joined(separator: " "))\"/>\n"
    }
    return (s, height)
}

/// `schedule` (a whole SVG document) with the growth chart of `points` drawn below it.
func appendingGrowthChart(_ schedule: String, _ points: [GrowthPoint], axis: String, timed: String) -> String {
    guard let w = schedule.firstMatch(of: /width="([0-9.]+)" height="([0-9.]+)"/),
          let width = Double(w.1), let height = Double(w.2) else { return schedule }
    let chart = growthSVG(points, axis: axis, timed: timed, width: width)
    guard chart.height > 0 else { return schedule }
    let total = height + chart.height
    let body = schedule.replacing(/<\?xml[^>]*\?>\n?/, with: "")
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        + "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(total))\" "
        + "viewBox=\"0 0 \(Int(width)) \(Int(total))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        + body
        + "<g transform=\"translate(0,\(Int(height)))\">\n<rect x=\"0\" y=\"0\" width=\"\(Int(width))\" height=\"\(Int(chart.height))\" fill=\"white\"/>\n"
        + chart.body + "</g>\n</svg>\n"
}
