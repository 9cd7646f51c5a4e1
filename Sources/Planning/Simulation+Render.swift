// Pictures of a simulation: Chrome trace-event JSON (chrome://tracing, Perfetto)
// and an SVG of bytes per tier over time with one lane per stream beneath.
import Foundation
import Memory
import Tensors

extension Simulation {
    /// Chrome trace-event JSON: one complete ("X") event per op on a thread per
    /// stream, and a counter ("C") per tier for the bytes in use. Times in µs.
    public func chromeTrace(_ schedule: Schedule) -> String {
        var events: [String] = []
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        }
        for (i, s) in Stream.allCases.enumerated() {
            events.append("{\"ph\":\"M\",\"pid\":1,\"tid\":\(i),\"name\":\"thread_name\",\"args\":{\"name\":\"\(s.rawValue)\"}}")
        }
        let byId = Dictionary(schedule.operations.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        for o in ops {
            guard let op = byId[o.id], o.end > o.start || op.kind != .free else { continue }
            let tid = Stream.allCases.firstIndex(of: op.stream) ?? 0
            let label = opLabel(op, schedule)
            events.append(String(format: "{\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"name\":\"%@\",\"cat\":\"%@\",\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"op\":%d}}",
                                 tid, esc(label), op.kind.rawValue, o.start * 1e6, (o.end - o.start) * 1e6, op.id))
        }
        for t in Tier.allCases {
            for p in timeline[t] ?? [] where (peak[t] ?? 0) > 0 {
                events.append(String(format: "{\"ph\":\"C\",\"pid\":1,\"name\":\"memory.%@\",\"ts\":%.3f,\"args\":{\"bytes\":%ld}}",
                                     t.rawValue, p.time * 1e6, p.bytes))
            }
        }
        return "{\"traceEvents\":[\n" + events.joined(separator: ",\n") + "\n],\"displayTimeUnit\":\"ms\"}\n"
    }

    func opLabel(_ op: Operation, _ schedule: Schedule) -> String {
        let stage = op.stage.map { $0 < schedule.stageNames.count ? schedule.stageNames[$0] : "\($0)" } ?? ""
        switch op.kind {
        case .forward: return "F \(stage)"
        case .recompute: return "R \(stage)"
        case .backward: return "B \(stage)"
        case .optimizerStep: return "opt \(stage)"
        case .prefetch, .offload: return "\(op.kind.rawValue) \(op.creates.first ?? "")\(op.creates.count > 1 ? " +\(op.creates.count - 1)" : "")"
        case .free: return "free"
        }
    }

    /// An SVG: bytes in use per tier over the step (one line each, the compute
    /// budget and each tier's peak as dashed lines), then one lane per stream.
    /// Elements carry ids and data attributes tests can find: `lane-<stream>`,
    /// `peak-<tier>` with `data-bytes`, `budget-compute`. With `hostIsCompute` (a CPU-only
    /// machine) the compute line is labelled as all of RAM and the budget as the RAM budget.
    public func svg(_ schedule: Schedule, budgets: TierBudgets = [:], title: String, hostIsCompute: Bool = false) -> String {
        let width = 1000.0, left = 90.0, right = 20.0, top = 40.0, chartH = 260.0
        let laneH = 28.0, laneGap = 6.0
        let streams = Stream.allCases
        let height = top + chartH + 40 + Double(streams.count) * (laneH + laneGap) + 50
        let plotW = width - left - right
        let T = max(stepSeconds, 1e-12)
        let tiers = Tier.allCases.filter { (peak[$0] ?? 0) > 0 }
        var ymax = tiers.map { peak[$0] ?? 0 }.max() ?? 1
        if let b = budgets[.compute] { ymax = max(ymax, b) }
        ymax = max(ymax, 1)
        func x(_ t: Double) -> Double { left + plotW * t / T }
        func y(_ b: Int) -> Double { top + chartH - chartH * Double(b) / Double(ymax) * 0.95 }
        let colors: [Tier: String] = [.compute: "#d62728", .host: "#1f77b4", .disk: "#2ca02c"]
        let opColors: [OperationKind: String] = [.forward: "#4e79a7", .recompute: "#f28e2b", .backward: "#59a14f",
                                                 .optimizerStep: "#b07aa1", .prefetch: "#76b7b2", .offload: "#e15759", .free: "#bab0ac"]
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        s += String(format: "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", width, height, width, height)
        s += "<rect x=\"0\" y=\"0\" width=\"\(width)\" height=\"\(height)\" fill=\"white\"/>\n"
        s += "<text x=\"\(left)\" y=\"20\" font-size=\"14\">\(esc(title))</text>\n"
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top + chartH, width - right, top + chartH)
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top, left, top + chartH)
        for q in 0...4 {
            let b = ymax * q / 4
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 4, y(b) + 4, formatBytes(b))
        }
        if let b = budgets[.compute] {
            s += String(format: "<line id=\"budget-compute\" data-bytes=\"%ld\" x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"black\" stroke-dasharray=\"2,3\"/>\n",
                        b, left, y(b), width - right, y(b))
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@ %@</text>\n", width - right, y(b) - 3,
                        hostIsCompute ? "RAM budget (compute + host)" : "budget", formatBytes(b))
        }
        for (ti, t) in tiers.enumerated() {
            let pts = timeline[t] ?? []
            var path = ""
            var prev = pts.first?.bytes ?? 0
            path += String(format: "M%.2f,%.2f", x(0), y(prev))
            for p in pts {
                path += String(format: " L%.2f,%.2f L%.2f,%.2f", x(p.time), y(prev), x(p.time), y(p.bytes))
                prev = p.bytes
            }
            path += String(format: " L%.2f,%.2f", x(T), y(prev))
            let c = colors[t] ?? "black"
            s += "<path id=\"memory-\(t.rawValue)\" d=\"\(path)\" fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\"/>\n"
            let pk = peak[t] ?? 0
            s += String(format: "<line id=\"peak-%@\" data-bytes=\"%ld\" x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"%@\" stroke-dasharray=\"6,4\" stroke-width=\"0.8\"/>\n",
                        t.rawValue, pk, left, y(pk), width - right, y(pk), c)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"%@\">%@ peak %@</text>\n",
                        left + 8 + Double(ti) * 260, top - 6, c,
                        hostIsCompute && t == .compute ? "RAM (compute = host)" : t.rawValue, formatBytes(pk))
        }
        let lanesTop = top + chartH + 30
        let byId = Dictionary(schedule.operations.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        for (li, st) in streams.enumerated() {
            let ly = lanesTop + Double(li) * (laneH + laneGap)
            s += "<g id=\"lane-\(st.rawValue)\">\n"
            s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f4f4f4\"/>\n", left, ly, plotW, laneH)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 4, ly + laneH / 2 + 4, st.rawValue)
            for o in ops {
                guard let op = byId[o.id], op.stream == st, o.end > o.start else { continue }
                let w = max(0.5, x(o.end) - x(o.start))
                s += String(format: "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%@\" stroke=\"white\" stroke-width=\"0.3\"><title>%@</title></rect>\n",
                            x(o.start), ly + 2, w, laneH - 4, opColors[op.kind] ?? "gray", esc(opLabel(op, schedule)))
            }
            s += "</g>\n"
        }
        let axisY = lanesTop + Double(streams.count) * (laneH + laneGap) + 14
        for q in 0...4 {
            let t = T * Double(q) / 4
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3f s</text>\n", x(t), axisY, t)
        }
        var lx = left
        for k in [OperationKind.forward, .recompute, .backward, .optimizerStep, .prefetch, .offload] {
            s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%@\"/><text x=\"%.1f\" y=\"%.1f\">%@</text>\n",
                        lx, axisY + 12, opColors[k]!, lx + 13, axisY + 21, k.rawValue)
            lx += 110
        }
        s += "</svg>\n"
        return s
    }
}
