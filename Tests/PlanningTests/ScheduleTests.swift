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
import Kernels

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

/// The most bytes compute and host hold together at any instant, replayed from the ops
/// and their simulated times (frees before allocations at equal times, as the simulator).
func replayCombinedPeak(_ s: Schedule, _ sim: Simulation, _ tiers: Set<Tier> = [.compute, .host]) -> Int {
    let sizes = s.tensorBytes
    var run = s.initial.filter { tiers.contains($0.tier) }.reduce(0) { $0 + sizes[$1.tensor]! }
    var events: [(Double, Int)] = []
    let times = Dictionary(uniqueKeysWithValues: sim.ops.map { ($0.id, ($0.start, $0.end)) })
    for op in s.operations {
        let (st, en) = times[op.id]!
        if tiers.contains(op.tier) {
            for n in op.creates { events.append((st, sizes[n]!)) }
            for n in op.frees { events.append((en, -sizes[n]!)) }
        }
        if op.tempBytes > 0 && tiers.contains(.compute) { events.append((st, op.tempBytes)); events.append((en, -op.tempBytes)) }
    }
    var peak = run
    for (_, d) in events.sorted(by: { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }) { run += d; peak = max(peak, run) }
    return peak
}

/// The default CPU speeds with compute on an accelerator: host is a tier of its own.
let acceleratorProfile: HardwareProfile = {
    var h = HardwareProfile.defaultCPU
    h.name = "test-accelerator"; h.accelerator = true
    return h
}()

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

    /// With an accelerator, compute and host are separate tiers with separate budgets.
    func testEveryStrategyRespectsEveryBudgetItWasGiven() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 2, seqLen: 64, hardware: acceleratorProfile)
        let unconstrained = Planner.plan(.keep, .keep, PlanRequest(chain: chain, hardware: acceleratorProfile))
        let keepPeak = try XCTUnwrap(unconstrained.simulation?.peak[.compute])
        var fitted = 0
        for fraction in [1.0, 0.6, 0.35] {
            let budget = Int(Double(keepPeak) * fraction)
            let host = Int(Double(keepPeak) * 1.5)
            for disk in [false, true] {
                let r = PlanRequest(chain: chain, hardware: acceleratorProfile, computeBudget: budget, hostBudget: host,
                                    useDisk: disk, rotorSlots: 200, pofoSlots: 20)
                XCTAssertNoThrow(try r.validate())
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
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 32, hardware: acceleratorProfile)
        let keep = Planner.plan(.recompute, .keep, PlanRequest(chain: chain, hardware: acceleratorProfile))
        let stream = Planner.plan(.recompute, .stream, PlanRequest(chain: chain, hardware: acceleratorProfile, useDisk: true))
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
        let p = Planner.plan(.pofo, .zeroOffload, PlanRequest(chain: chain, hardware: acceleratorProfile, computeBudget: 3_000_000,
                                                              rotorSlots: 50, pofoSlots: 20))
        XCTAssertTrue(p.fits, p.failure ?? "")
        let s = try XCTUnwrap(p.schedule)
        let back = try Schedule.load(json: try s.jsonData())
        XCTAssertEqual(back, s)
        XCTAssertEqual(try back.simulate().stepSeconds, try s.simulate().stepSeconds)
        // Names an executor can follow.
        let names = Set(s.tensors.map(\.name))
        for n in ["act.0.attn_in", "w.0.ffn_up", "grad.0.ffn_up", "adam.m.0.ffn_up", "act.1.attn_lse"] {
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
            // CPU-only: one RAM budget, named as such.
            XCTAssertTrue(text.contains("smallest RAM budget that fits is"), text)
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
        let (chosen, all) = try Planner.auto(PlanRequest(chain: chain, computeBudget: 50_000_000, useDisk: true,
                                                         rotorSlots: 200, pofoSlots: 20))
        let fitting = all.filter(\.fits)
        XCTAssertFalse(fitting.isEmpty)
        XCTAssertLessThan(fitting.count, all.filter { !$0.skipped }.count, "the budget must rule some strategies out")
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

/// A CPU-only profile (the default): host memory is compute memory.
final class CPUOnlyTests: XCTestCase {
    func check(_ r: PlanRequest, _ all: [PlanResult], file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        let budget = try XCTUnwrap(r.computeBudget)
        var fitted = 0
        for p in all where p.fits {
            let s = p.schedule!, sim = p.simulation!
            XCTAssertLessThanOrEqual(replayCombinedPeak(s, sim), budget, "\(p.name): compute + host over the one RAM budget",
                                     file: file, line: line)
            XCTAssertEqual(replayCombinedPeak(s, sim), sim.combinedPeak([.compute, .host]), p.name, file: file, line: line)
            XCTAssertEqual(replayPeaks(s, sim), sim.peak, p.name, file: file, line: line)
            XCTAssertEqual(sim.leaks, [], p.name, file: file, line: line)
            // No copies between the two names of one memory, and no host stream running beside compute for free.
            XCTAssertFalse(s.operations.contains { $0.stream == .host }, p.name, file: file, line: line)
            XCTAssertEqual(sim.bytesMoved.keys.filter { $0.contains("host") }, [], p.name, file: file, line: line)
            fitted += 1
        }
        return fitted
    }

    /// The case that overcommitted: offload+stream had 706 MiB compute and 432 MiB host
    /// under a 1 GiB budget. Every fitting plan now keeps compute + host ≤ the budget.
    func testEveryFittingPlanKeepsComputePlusHostUnderTheOneBudget() throws {
        let cfg = try LlamaConfig.named("smollm2-135m")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 4, seqLen: 256, hardware: .defaultCPU)
        let gib = 1 << 30
        let r = PlanRequest(chain: chain, computeBudget: gib, useDisk: true, rotorSlots: 200, pofoSlots: 20)
        let all = Planner.compareAll(r)
        XCTAssertGreaterThanOrEqual(try check(r, all), 3)
        let (chosen, _) = try Planner.auto(r)
        XCTAssertEqual(chosen.parameters, .stream)

        let small = try LlamaConfig.named("small")
        let sc = ModelChain.llama(small, mode: .train, batch: 2, seqLen: 64, hardware: .defaultCPU)
        let keepPeak = try XCTUnwrap(Planner.plan(.keep, .keep, PlanRequest(chain: sc)).simulation?.peak[.compute])
        var fitted = 0
        for fraction in [1.0, 0.6, 0.35, 0.2] {
            for disk in [false, true] {
                let q = PlanRequest(chain: sc, computeBudget: Int(Double(keepPeak) * fraction), useDisk: disk,
                                    rotorSlots: 200, pofoSlots: 20)
                fitted += try check(q, Planner.compareAll(q))
            }
        }
        XCTAssertGreaterThan(fitted, 15)
    }

    /// Weights, m and v streamed from disk: the whole step fits in less RAM than keep-all's,
    /// and less than the parameters and optimizer state alone.
    func testStreamingFromDiskFitsUnderLessThanKeepAll() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 32, hardware: .defaultCPU)
        let keepPeak = try XCTUnwrap(Planner.plan(.keep, .keep, PlanRequest(chain: chain)).simulation?.peak[.compute])
        let budget = 3 * chain.parameterBytes / 2
        XCTAssertLessThan(budget, keepPeak)
        let r = PlanRequest(chain: chain, computeBudget: budget, useDisk: true)
        XCTAssertFalse(Planner.plan(.keep, .keep, r).fits)
        let p = Planner.plan(.recompute, .stream, r)
        XCTAssertTrue(p.fits, p.failure ?? "")
        let sim = try XCTUnwrap(p.simulation), s = try XCTUnwrap(p.schedule)
        XCTAssertLessThanOrEqual(replayCombinedPeak(s, sim), budget)
        XCTAssertGreaterThanOrEqual(sim.peak[.disk]!, 3 * chain.parameterBytes)
        // w is read for the forward (and again for the backward when it was dropped in between), m and v
        // once for the step; w, m, v written back. Never via host.
        XCTAssertGreaterThanOrEqual(sim.bytesMoved["disk→compute"]!, 3 * chain.parameterBytes)
        let adamRead = s.operations.filter { $0.kind == .prefetch }.flatMap(\.creates).filter { $0.hasPrefix("adam.") }
        XCTAssertEqual(adamRead.count, Set(adamRead).count)
        XCTAssertEqual(adamRead.reduce(0) { $0 + s.tensorBytes[$1]! }, 2 * chain.parameterBytes)
        XCTAssertEqual(sim.bytesMoved["compute→disk"], 3 * chain.parameterBytes)
        XCTAssertNil(sim.bytesMoved["host→disk"])
        // The optimizer step is compute work on the compute stream, one per parameter group.
        XCTAssertEqual(s.operations.filter { $0.kind == .optimizerStep && $0.stream == .compute && $0.tier == .compute }.count,
                       chain.stages.filter { !$0.parameters.isEmpty }.count)
    }

    func testHostBudgetIsAnErrorWithoutAnAccelerator() throws {
        let cfg = try LlamaConfig.named("tiny")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 16, hardware: .defaultCPU)
        let r = PlanRequest(chain: chain, computeBudget: 1 << 30, hostBudget: 0, useDisk: true)
        XCTAssertThrowsError(try r.validate()) { XCTAssertTrue("\($0)".contains("same RAM"), "\($0)") }
        XCTAssertThrowsError(try Planner.auto(r)) { XCTAssertTrue("\($0)".contains("--host-budget"), "\($0)") }
        var a = r; a.hardware = acceleratorProfile
        XCTAssertNoThrow(try a.validate())
    }

    /// Combinations that would only move bytes between host and compute are not plans of their own.
    func testHostOnlyCombinationsAreSkippedWithAReason() throws {
        let cfg = try LlamaConfig.named("tiny")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 16, hardware: .defaultCPU)
        for disk in [false, true] {
            let all = Planner.compareAll(PlanRequest(chain: chain, useDisk: disk))
            for p in all where p.parameters == .zeroOffload || (!disk && (p.parameters == .stream || p.activations == .offload || p.activations == .pofo)) {
                XCTAssertTrue(p.skipped, p.name); XCTAssertFalse(p.fits, p.name)
                XCTAssertTrue(p.failure?.contains("CPU-only") == true, p.failure ?? "")
            }
            if disk { XCTAssertTrue(all.first { $0.name == "offload+stream" }?.fits == true) }
        }
        // With an accelerator they are plans again.
        let z = Planner.plan(.keep, .zeroOffload, PlanRequest(chain: chain, hardware: acceleratorProfile))
        XCTAssertTrue(z.fits, z.failure ?? "")
        XCTAssertGreaterThan(z.simulation!.peak[.host]!, 0)
        XCTAssertEqual(HardwareProfile.defaultCPU.bandwidth(from: .host, to: .compute), .infinity)
        XCTAssertEqual(acceleratorProfile.bandwidth(from: .host, to: .compute), acceleratorProfile.hostLinkBandwidth)
    }

    /// Profiles without the key (what `offload profile` writes today) are CPU-only.
    func testProfileJSONWithoutAcceleratorIsCPUOnly() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("planfix-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let old = dir.appendingPathComponent("old.json"), gpu = dir.appendingPathComponent("gpu.json")
        try Data(#"{"machine": "box", "gemm_flops": 1e11, "memcpy_bytes_per_second": 1e10, "disk_read_bytes_per_second": 1e9, "disk_write_bytes_per_second": 1e9, "host_compute_bytes_per_second": 1e10}"#.utf8).write(to: old)
        try Data(#"{"name": "gpu", "gemmFlops": 1e13, "memoryBandwidth": 1e12, "diskReadBandwidth": 1e9, "diskWriteBandwidth": 1e9, "hostLinkBandwidth": 2e10, "accelerator": true}"#.utf8).write(to: gpu)
        XCTAssertTrue(try HardwareProfile.load(path: old.path).hostIsCompute)
        XCTAssertFalse(try HardwareProfile.load(path: gpu.path).hostIsCompute)
        let legacy = Data(#"{"name": "x", "gemmFlops": 1, "memoryBandwidth": 1, "diskReadBandwidth": 1, "diskWriteBandwidth": 1, "hostLinkBandwidth": 1}"#.utf8)
        XCTAssertFalse(try JSONDecoder().decode(HardwareProfile.self, from: legacy).accelerator)
        XCTAssertEqual(try JSONDecoder().decode(HardwareProfile.self, from: try JSONEncoder().encode(acceleratorProfile)), acceleratorProfile)
        // Old profiles have no duplex rate nor I/O cost: the directions are independent and free.
        XCTAssertNil(try HardwareProfile.load(path: old.path).diskDuplexBandwidth)
        XCTAssertEqual(try HardwareProfile.load(path: old.path).ioComputeSecondsPerByte, 0)
        // What `offload profile` writes now.
        let new = dir.appendingPathComponent("new.json")
        try Data(#"{"machine": "box", "gemm_flops": 1e11, "memcpy_bytes_per_second": 1e10, "disk_read_bytes_per_second": 1e9, "disk_write_bytes_per_second": 2e9, "host_compute_bytes_per_second": 1e10, "disk_duplex_bytes_per_second": 1.5e9, "io_compute_seconds_per_byte": 1e-10}"#.utf8).write(to: new)
        let loaded = try HardwareProfile.load(path: new.path)
        XCTAssertEqual(loaded.diskDuplexBandwidth, 1.5e9)
        XCTAssertEqual(loaded.ioComputeSecondsPerByte, 1e-10)
        XCTAssertEqual(loaded.duplexFactor, 0.5, accuracy: 1e-12)
        XCTAssertEqual(try JSONDecoder().decode(HardwareProfile.self, from: try JSONEncoder().encode(loaded)), loaded)
        try Data(#"{"machine": "box", "gemm_flops": 1e11, "memcpy_bytes_per_second": 1e10, "disk_read_bytes_per_second": 1e9, "disk_write_bytes_per_second": 2e9, "host_compute_bytes_per_second": 1e10, "io_compute_seconds_per_byte": -1}"#.utf8).write(to: new)
        XCTAssertThrowsError(try HardwareProfile.load(path: new.path)) {
            XCTAssertTrue("\($0)".contains("ioComputeSecondsPerByte"), "\($0)")
        }
    }

    /// With the trainer's measured kernel rates, a training stage's time is each kind of work over its
    /// rate: halving one rate adds exactly that kind's work once more, and nothing else changes.
    func testTrainingKernelRatesTimeEachKindOfWork() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kernels-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("p.json")
        let rates = #""matmul_flops_per_second": 3e11, "matmul_backward_flops_per_second": 2.5e11, "attention_flops_per_second": 6e10, "attention_backward_flops_per_second": 1.5e11, "elementwise_bytes_per_second": 2e10, "cross_entropy_logits_per_second": 4e9, "adamw_parameters_per_second": 8e8"#
        try Data(#"{"machine": "box", "gemm_flops": 1e11, "memcpy_bytes_per_second": 1e10, "disk_read_bytes_per_second": 1e9, "disk_write_bytes_per_second": 1e9, "host_compute_bytes_per_second": 1e10, "training_kernels": {"#.utf8
                 + Data(rates.utf8) + Data("}}".utf8)).write(to: file)
        let hw = try HardwareProfile.load(path: file.path)
        let k = try XCTUnwrap(hw.training)
        XCTAssertEqual(try JSONDecoder().decode(HardwareProfile.self, from: try JSONEncoder().encode(hw)), hw)
        let c = try LlamaConfig.named("small"), B = 2, T = 64
        let chain = ModelChain.llama(c, mode: .train, batch: B, seqLen: T, hardware: hw)
        var slowAttention = hw
        slowAttention.training!.attentionFlops /= 2
        let slower = ModelChain.llama(c, mode: .train, batch: B, seqLen: T, hardware: slowAttention)
        // T = 64 is one band of 64 query rows against all 64 keys (the kernels compute the diagonal block
        // whole): QKᵀ and P·V, 2 FLOPs per multiply-add, over T·T pairs, twice the causal T²/2.
        let attention = 4 * Double(B * c.heads) * Double(T * T) * Double(c.headDim)
        XCTAssertEqual(slower.stages[1].forwardSeconds - chain.stages[1].forwardSeconds, attention / k.attentionFlops,
                       accuracy: 1e-12)
        XCTAssertEqual(slower.stages[1].backwardSeconds, chain.stages[1].backwardSeconds)
        XCTAssertEqual(slower.stages.last!.forwardSeconds, chain.stages.last!.forwardSeconds, "the head has no attention")
        // The head: its product and one pass of cross-entropy over every logit, each way.
        let n = Double(B * T), logits = n * Double(c.vocabSize), product = 2 * n * Double(c.dim * c.vocabSize)
        XCTAssertEqual(chain.stages.last!.forwardSeconds, product / k.matmulFlops + logits / k.crossEntropyLogitsPerSecond,
                       accuracy: 1e-12)
        XCTAssertEqual(chain.stages.last!.backwardSeconds,
                       2 * product / k.matmulBackwardFlops + logits / k.crossEntropyLogitsPerSecond, accuracy: 1e-12)
        XCTAssertEqual(chain.optimizerSecondsPerParameterByte, 1 / (4 * k.adamwParametersPerSecond), accuracy: 1e-20)
        // Generation is not training: its decode times stay on the peak rates.
        XCTAssertEqual(ModelChain.llama(c, mode: .generate, batch: 1, seqLen: T, hardware: hw).stages[1].forwardSeconds,
                       ModelChain.llama(c, mode: .generate, batch: 1, seqLen: T, hardware: slowAttention).stages[1].forwardSeconds)
        try Data(#"{"machine": "box", "gemm_flops": 1e11, "memcpy_bytes_per_second": 1e10, "disk_read_bytes_per_second": 1e9, "disk_write_bytes_per_second": 1e9, "host_compute_bytes_per_second": 1e10, "training_kernels": {"#.utf8
                 + Data(rates.replacingOccurrences(of: "6e10", with: "0").utf8) + Data("}}".utf8)).write(to: file)
        XCTAssertThrowsError(try HardwareProfile.load(path: file.path)) { XCTAssertTrue("\($0)".contains("training kernel"), "\($0)") }
    }

    /// On a CPU-only machine every byte of disk I/O takes `ioComputeSecondsPerByte` from compute:
    /// the compute ops of a streamed step last that much longer in all, and not at all on an
    /// accelerator or without disk traffic.
    func testDirectIOTakesItsComputeCostFromTheCores() throws {
        let cfg = try LlamaConfig.named("small")
        let chain = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 32, hardware: .defaultCPU)
        func computeSeconds(_ h: HardwareProfile, _ a: ActivationStrategy, _ p: ParameterPlacement) throws -> (Double, Int) {
            let plan = Planner.plan(a, p, PlanRequest(chain: chain, hardware: h, useDisk: true))
            let s = try XCTUnwrap(plan.schedule, plan.failure ?? "")
            let compute = s.operations.filter { $0.stream == .compute }.reduce(0) { $0 + $1.seconds }
            let disk = s.operations.filter { ($0.kind == .prefetch || $0.kind == .offload) && ($0.from == .disk || $0.tier == .disk) }
                .flatMap(\.creates).reduce(0) { $0 + s.tensorBytes[$1]! }
            return (compute, disk)
        }
        var costly = HardwareProfile.defaultCPU
        costly.ioComputeSecondsPerByte = 1e-9
        let (base, moved) = try computeSeconds(.defaultCPU, .offload, .stream)
        let (slower, moved2) = try computeSeconds(costly, .offload, .stream)
        XCTAssertGreaterThan(moved, 3 * chain.parameterBytes)
        XCTAssertEqual(moved, moved2)
        XCTAssertEqual(slower - base, Double(moved) * 1e-9, accuracy: 1e-9 * base)
        // Keep-all moves nothing: nothing changes.
        XCTAssertEqual(try computeSeconds(costly, .keep, .keep).0, try computeSeconds(.defaultCPU, .keep, .keep).0)
        // An accelerator's host cores do the I/O: compute keeps its time.
        var gpu = acceleratorProfile
        gpu.ioComputeSecondsPerByte = 1e-9
        XCTAssertEqual(try computeSeconds(gpu, .offload, .stream).0, try computeSeconds(acceleratorProfile, .offload, .stream).0,
                       accuracy: 1e-12)
    }

    /// A training step reads and writes the disk at once: with a duplex rate below the two
    /// directions' sum, each transfer takes longer by their ratio; generation is not affected.
    func testDuplexDiskSlowsTrainingTransfersOnly() throws {
        var shared = HardwareProfile.defaultCPU
        shared.diskDuplexBandwidth = (shared.diskReadBandwidth + shared.diskWriteBandwidth) / 2
        XCTAssertEqual(shared.duplexFactor, 0.5, accuracy: 1e-12)
        var fast = HardwareProfile.defaultCPU
        fast.diskDuplexBandwidth = 10 * (fast.diskReadBandwidth + fast.diskWriteBandwidth)
        XCTAssertEqual(fast.duplexFactor, 1)
        let cfg = try LlamaConfig.named("small")
        for (mode, slowed) in [(RunMode.train, true), (.generate, false)] {
            let chain = ModelChain.llama(cfg, mode: mode, batch: 1, seqLen: 32, hardware: .defaultCPU)
            func transferSeconds(_ h: HardwareProfile) throws -> [Double] {
                let a: ActivationStrategy = mode == .train ? .offload : .keep
                let plan = Planner.plan(a, .stream, PlanRequest(chain: chain, hardware: h, useDisk: true))
                let s = try XCTUnwrap(plan.schedule, plan.failure ?? "")
                return s.operations.filter { $0.kind == .prefetch || $0.kind == .offload }.map(\.seconds)
            }
            let alone = try transferSeconds(.defaultCPU), together = try transferSeconds(shared)
            XCTAssertFalse(alone.isEmpty)
            XCTAssertEqual(alone.count, together.count)
            for (a, t) in zip(alone, together) { XCTAssertEqual(t, slowed ? 2 * a : a, accuracy: 1e-12 * max(1, a), "\(mode)") }
        }
    }
}

/// The ring of KV span reads is chosen by the profile's disk rates: the span and readers whose reads of
/// the disk heads the profile says take least time, the heads that fit beside it kept in memory.
final class KVRingTests: XCTestCase {
    func plan(_ hw: HardwareProfile) throws -> StreamingPlan {
        let c = try LlamaConfig.named("smollm2-135m")
        return try StreamingPlan(budget: 32_000_000, stages: try weightStages(config: c, dtype: .q8_0), config: c,
                                 promptTokens: 6000, contextCapacity: 6100, hardware: hw)
    }

    func testTheRingFollowsTheDisksRates() throws {
        func profile(_ rate: (Int, Int) -> Double) -> HardwareProfile {
            var h = HardwareProfile.defaultCPU
            h.diskRates = [128 << 10, 512 << 10, 2 << 20].flatMap { size in
                [1, 2, 4].map { HardwareProfile.DiskRate(requestBytes: size, queueDepth: $0,
                                                         readBytesPerSecond: rate(size, $0), writeBytesPerSecond: 1e9) }
            }
            return h
        }
        // A disk that does not care: the ring takes least memory (short spans, 2 readers), more heads stay.
        let flat = try plan(profile { _, _ in 1e9 })
        // A disk that wants large requests, several at once.
        let eager = try plan(profile { size, depth in 2e8 * Double(depth) * Double(size) / Double(128 << 10) })

        let c = try LlamaConfig.named("smollm2-135m"), eagerDisk = profile { size, depth in 2e8 * Double(depth) * Double(size) / Double(128 << 10) }
        XCTAssertGreaterThan(flat.kvDiskHeads, 0)
        XCTAssertEqual(flat.kvSpanPositions, attentionKeyBlock, "\(flat.summary)")
        XCTAssertEqual(flat.kvReaders, 2)
        XCTAssertGreaterThan(eager.kvSpanPositions, 4 * flat.kvSpanPositions, eager.summary)
        XCTAssertGreaterThanOrEqual(eager.kvDiskHeads, flat.kvDiskHeads, "a larger ring leaves no more heads in memory")
        XCTAssertGreaterThan(eager.kvReadBandwidth(hardware: eagerDisk, config: c), 4 * flat.kvReadBandwidth(hardware: eagerDisk, config: c))
        for p in [flat, eager] { XCTAssertLessThanOrEqual(p.plannedBytes, p.budget) }
        XCTAssertTrue(eager.summary.contains("read in spans of \(eager.kvSpanPositions) positions, \(eager.kvReaders) at a time"),
                      eager.summary)
    }
}
