// The IR, the simulator's memory accounting, the strategies' budgets and closed
// forms, auto's infeasibility message, and the SVG.
import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Models
import Memory
import Planning

/// A chain of n identical stages with no parameters: input x bytes, S saved bytes, no temporaries.
func uniformChain(_ n: Int, x: Int, saved: Int) -> ModelChain {
    let stages = (0..<n).map { k in
        ChainStage(name: "\(k)", input: LogicalTensor(name: "act.\(k).in", bytes: x),
                   saved: [LogicalTensor(name: "act.\(k).saved", bytes: saved)], forwardTempBytes: 0,
                   backwardTempBytes: 0, forwardSeconds: 1, backwardSeconds: 2)
    }
    return ModelChain(model: "uniform", mode: .train, batch: 1, seqLen: 1, stages: stages,
                      output: LogicalTensor(name: "act.loss", bytes: 0), optimizerSecondsPerParameterByte: 0)
}

/// Peak bytes per tier recomputed from the ops and their simulated times, independently of the simulator.
func replayPeaks(_ s: Schedule, _ sim: Simulation) -> [Tier: Int] {
    let sizes = s.tensorBytes
    var events: [(Tier, Double, Int)] = []
    var base: [Tier: Int] = [:]
    for p in s.initial { base[p.tier, default: 0] += sizes[p.tensor]! }
    let times = Dictionary(uniqueKeysWithValues: sim.ops.map { ($0.id, ($0.start, $0.end)) })
    for op in s.operations {
        let (st, en) = times[op.id]!
        for n in op.creates { events.append((op.tier, st, sizes[n]!)) }
        for n in op.frees { events.append((op.tier, en, -sizes[n]!)) }
        if op.tempBytes > 0 { events.append((.compute, st, op.tempBytes)); events.append((.compute, en, -op.tempBytes)) }
    }
    var peaks: [Tier: Int] = [:]
    for t in Tier.allCases {
        let e = events.filter { $0.0 == t }.sorted { $0.1 < $1.1 || ($0.1 == $1.1 && $0.2 < $1.2) }
        var run = base[t] ?? 0, peak = run
        for (_, _, d) in e { run += d; peak = max(peak, run) }
        peaks[t] = peak
    }
    return peaks
}

final class StrategyMemoryTests: XCTestCase {
    func peak(_ actions: [ChainAction], _ chain: ModelChain) throws -> Int {
        let s = chain.schedule(actions, strategy: "t", options: BuildOptions(), hardware: .defaultCPU)
        let sim = try s.simulate()
        XCTAssertEqual(sim.leaks, [])
        return sim.peak[.compute]!
    }

    func testRecomputeSqrtAndKeepMatchTheirClosedForms() throws {
        let n = 16, x = 100, S = 50
        let chain = uniformChain(n, x: x, saved: S)
        // keep: every input and saved activation, plus the first gradient.
        XCTAssertEqual(try peak(ChainStrategies.keep(n), chain), n * x + n * S + x)
        // recompute: n checkpoints, one stage's activations, one gradient.
        XCTAssertEqual(try peak(ChainStrategies.recompute(n), chain), (n + 1) * x + S)
        // sqrt (Chen et al.): c = n/L segment checkpoints, one segment of L stages fully
        // materialised (inputs and saved), one gradient: (c + L)·x + L·S with L = √n.
        let L = 4, c = n / L
        XCTAssertEqual(try peak(ChainStrategies.sqrt(n), chain), (c + L) * x + L * S)
        // And sqrt's recompute is one forward of every stage outside the last segment.
        let s = chain.schedule(ChainStrategies.sqrt(n), strategy: "sqrt", options: BuildOptions(), hardware: .defaultCPU)
        XCTAssertEqual(try s.simulate().recomputeSeconds, Double(n - L) * 1)
    }

    func testEveryStrategyRespectsEveryBudgetItWasGiven() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 2, seqLen: 64, hardware: .defaultCPU)
        let unconstrained = Planner.plan(.keep, .keep, PlanRequest(chain: chain))
        let keepPeak = try XCTUnwrap(unconstrained.simulation?.peak[.compute])
        var fitted = 0
        for fraction in [1.0, 0.6, 0.35] {
            let budget = Int(Double(keepPeak) * fraction)
            let host = Int(Double(keepPeak) * 1.5)
            for disk in [false, true] {
                let r = PlanRequest(chain: chain, computeBudget: budget, hostBudget: host, useDisk: disk, rotorSlots: 200, pofoSlots: 20)
                for p in Planner.compareAll(r) where p.fits {
                    let sim = p.simulation!, s = p.schedule!
                    XCTAssertLessThanOrEqual(sim.peak[.compute]!, budget, p.name)
                    XCTAssertLessThanOrEqual(sim.peak[.host]!, host, p.name)
                    XCTAssertEqual(replayPeaks(s, sim), sim.peak, "\(p.name): simulator peaks differ from a replay")
                    XCTAssertEqual(sim.leaks, [], p.name)
                    fitted += 1
                }
                if fraction < 1 {
                    XCTAssertFalse(Planner.plan(.keep, .keep, r).fits, "keep-all cannot fit below its own peak")
                    XCTAssertTrue(Planner.plan(.rotor, .stream, r).fits, "rotor with streamed parameters fits at \(fraction)")
                }
            }
        }
        XCTAssertGreaterThan(fitted, 30)
    }

    func testOffloadMovesEveryActivationOutAndBack() throws {
        let n = 6
        let chain = uniformChain(n, x: 100, saved: 50)
        let s = chain.schedule(ChainStrategies.offload(n), strategy: "offload", options: BuildOptions(offloadTier: .disk), hardware: .defaultCPU)
        let sim = try s.simulate()
        // Every stage but the last writes (input + saved) out and reads it back.
        XCTAssertEqual(sim.bytesMoved["compute→disk"], (n - 1) * 150)
        XCTAssertEqual(sim.bytesMoved["disk→compute"], (n - 1) * 150)
        XCTAssertEqual(sim.leaks, [])
        XCTAssertLessThan(sim.peak[.compute]!, n * 150)
    }

    func testStreamedParametersStayOffTheComputeTier() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 32, hardware: .defaultCPU)
        let keep = Planner.plan(.recompute, .keep, PlanRequest(chain: chain))
        let stream = Planner.plan(.recompute, .stream, PlanRequest(chain: chain, useDisk: true))
        let kp = try XCTUnwrap(keep.simulation), sp = try XCTUnwrap(stream.simulation)
        // keep holds weights, m and v: at least 3× the parameters.
        XCTAssertGreaterThanOrEqual(kp.peak[.compute]!, 3 * chain.parameterBytes)
        XCTAssertLessThan(sp.peak[.compute]!, chain.parameterBytes)
        XCTAssertGreaterThanOrEqual(sp.peak[.disk]!, 3 * chain.parameterBytes)
        // Each host optimizer step reads w, m, v from disk and writes them back.
        XCTAssertGreaterThanOrEqual(sp.bytesMoved["host→disk"]!, 3 * chain.parameterBytes)
        XCTAssertEqual(stream.schedule!.operations.filter { $0.kind == .optimizerStep && $0.stream == .host }.count,
                       chain.stages.filter { !$0.parameters.isEmpty }.count)
    }
}

final class ScheduleIRTests: XCTestCase {
    func testScheduleJSONRoundTripsAndSimulatesTheSame() throws {
        let cfg = try LlamaConfig.named("tiny")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 2, seqLen: 16, hardware: .defaultCPU)
        let p = Planner.plan(.pofo, .zeroOffload, PlanRequest(chain: chain, computeBudget: 3_000_000, rotorSlots: 50, pofoSlots: 20))
        XCTAssertTrue(p.fits, p.failure ?? "")
        let s = try XCTUnwrap(p.schedule)
        let back = try Schedule.load(json: try s.jsonData())
        XCTAssertEqual(back, s)
        XCTAssertEqual(try back.simulate().stepSeconds, try s.simulate().stepSeconds)
        // Names an executor can follow.
        let names = Set(s.tensors.map(\.name))
        for n in ["act.0.attn_in", "w.0.ffn_up", "grad.0.ffn_up", "adam.m.0.ffn_up", "act.1.attn_probs"] {
            XCTAssertTrue(names.contains(n), n)
        }
        XCTAssertTrue(s.description.contains("backward"))
        XCTAssertThrowsError(try Schedule.load(json: Data("{\"strategy\": 3}".utf8)))
    }

    func testSimulatorRejectsAMissingDependencyAndAnOverflow() throws {
        let t = [LogicalTensor(name: "a", bytes: 10), LogicalTensor(name: "b", bytes: 10)]
        // b is read by a compute op before the transfer that brings it has finished.
        let racy = Schedule(strategy: "t", model: "m", mode: "train", stageNames: [], tensors: t,
                            initial: [Placement(tensor: "b", tier: .host)], operations: [
            Operation(id: 0, kind: .prefetch, stream: .read, tier: .compute, from: .host, reads: ["b"], creates: ["b"], seconds: 1),
            Operation(id: 1, kind: .forward, stream: .compute, stage: 0, reads: ["b"], creates: ["a"], seconds: 1),
        ])
        XCTAssertThrowsError(try racy.simulate()) { XCTAssertTrue("\($0)".contains("missing dependency")) }
        var fixed = racy
        fixed.operations[1].deps = [0]
        XCTAssertEqual(try fixed.simulate().stepSeconds, 2)
        XCTAssertThrowsError(try fixed.simulate(budgets: [.compute: 15]))
        XCTAssertEqual(try fixed.simulate(budgets: [.compute: 20]).peak[.compute], 20)
    }
}

final class AutoTests: XCTestCase {
    func testInfeasibleBudgetNamesTheSmallestBudgetThatFits() throws {
        let cfg = try LlamaConfig.named("tiny")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 32, hardware: .defaultCPU)
        let r = PlanRequest(chain: chain, computeBudget: 20_000, rotorSlots: 100, pofoSlots: 20)
        var message = ""
        XCTAssertThrowsError(try Planner.auto(r)) { message = "\($0)" }
        do {
            let text = message
            XCTAssertTrue(text.contains("smallest compute budget that fits is"), text)
            guard let open = text.range(of: "("), let close = text.range(of: " bytes", range: open.upperBound..<text.endIndex),
                  let bytes = Int(text[open.upperBound..<close.lowerBound].split(separator: "(").last ?? "") else {
                return XCTFail("no byte count in: \(text)")
            }
            _ = bytes
            XCTAssertGreaterThan(bytes, 20_000)
            var ok = r; ok.computeBudget = bytes
            XCTAssertNoThrow(try Planner.auto(ok), "the named budget must fit")
            var less = r; less.computeBudget = bytes * 9 / 10
            XCTAssertThrowsError(try Planner.auto(less), "10% less than the named budget must not fit")
        }
    }

    func testAutoPicksTheFastestFittingPlan() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 2, seqLen: 64, hardware: .defaultCPU)
        let (chosen, all) = try Planner.auto(PlanRequest(chain: chain, computeBudget: 20_000_000, rotorSlots: 200, pofoSlots: 20))
        let fitting = all.filter(\.fits)
        XCTAssertFalse(fitting.isEmpty)
        XCTAssertLessThan(fitting.count, all.count, "the budget must rule some strategies out")
        for p in fitting { XCTAssertLessThanOrEqual(chosen.simulation!.stepSeconds, p.simulation!.stepSeconds) }
    }

    func testGenerationPlansKVAndWeights() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .generate, batch: 4, seqLen: 512, hardware: .defaultCPU)
        let all = Planner.compareAll(PlanRequest(chain: chain, useDisk: true))
        let keep = try XCTUnwrap(all.first { $0.name == "keep" }?.simulation)
        let kv = try XCTUnwrap(all.first { $0.name == "kv-offload" }?.simulation)
        let kvBytes = chain.stages.compactMap(\.kvCache).reduce(0) { $0 + $1.bytes }
        XCTAssertEqual(kv.bytesMoved["disk→compute"], kvBytes)
        XCTAssertLessThanOrEqual(kv.peak[.compute]!, keep.peak[.compute]! - kvBytes + kvBytes / 2)
    }
}

final class SVGTests: XCTestCase {
    final class Collector: NSObject, XMLParserDelegate {
        var lanes: [String] = []
        var attrs: [String: [String: String]] = [:]
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String]) {
            if let id = attributes["id"] {
                attrs[id] = attributes
                if name == "g" && id.hasPrefix("lane-") { lanes.append(String(id.dropFirst(5))) }
            }
        }
    }

    func testSVGIsWellFormedWithOneLanePerStreamAndThePeakLineAtThePeak() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 2, seqLen: 64, hardware: .defaultCPU)
        let budget = 30_000_000
        let p = Planner.plan(.offload, .stream, PlanRequest(chain: chain, computeBudget: budget, useDisk: true))
        let sim = try XCTUnwrap(p.simulation)
        let svg = sim.svg(p.schedule!, budgets: [.compute: budget], title: "test <&>")
        let parser = XMLParser(data: Data(svg.utf8))
        let c = Collector()
        parser.delegate = c
        XCTAssertTrue(parser.parse(), "not well-formed: \(String(describing: parser.parserError))")
        XCTAssertEqual(c.lanes, Stream.allCases.map(\.rawValue))
        let peakLine = try XCTUnwrap(c.attrs["peak-compute"])
        XCTAssertEqual(Int(peakLine["data-bytes"] ?? ""), sim.peak[.compute])
        // The dashed peak line sits exactly at the highest point of the compute memory path.
        let path = try XCTUnwrap(c.attrs["memory-compute"]?["d"])
        let ys = path.split(whereSeparator: { $0 == " " }).compactMap { Double($0.dropFirst().split(separator: ",").last ?? "") }
        let top = try XCTUnwrap(ys.min())
        XCTAssertEqual(Double(peakLine["y1"] ?? "") ?? -1, top, accuracy: 0.01)
        // The budget line is above (smaller y than) or at the peak line.
        let budgetY = try XCTUnwrap(Double(c.attrs["budget-compute"]?["y1"] ?? ""))
        XCTAssertLessThanOrEqual(budgetY, top + 0.01)
    }
}
