// Expert offloading changes where experts are, never the result: under every pool size from one
// token's experts to all of them, both policies and any read-ahead width, prefill and decode give the
// all-resident logits bit for bit; and the counts it reports add up.
import Foundation
import Models
import Planning
import Runtime
import Tensors
import XCTest

final class ExpertCacheTests: XCTestCase {
    static let files = ["mixtral.f32.gguf", "mixtral-split.f32.gguf", "mixtral-fused.f32.gguf", "qwen2moe.f32.gguf",
                        "olmoe.f32.gguf", "qwen3moe.f32.gguf"]
    let ids = (0..<40).map { ($0 * 37 + 11) % 64 }

    func path(_ f: String) throws -> String {
        let dir = AssetCache.directory + "/models/tiny"
        guard FileManager.default.fileExists(atPath: dir + "/" + f) else {
            XCTFail("missing \(dir)/\(f): run python3 scripts/make-tiny-models.py")
            throw CocoaError(.fileNoSuchFile)
        }
        return dir + "/" + f
    }

    /// Prefill of 24 ids, then 16 decode steps: every logit.
    func run(_ model: LlamaModel) throws -> [Float] {
        let cache = model.makeCache(capacity: ids.count)
        var out = try model.forward(Array(ids.prefix(24)), cache: cache, allLogits: true)
        for t in ids.dropFirst(24) { out += try model.forward([t], cache: cache) }
        return out
    }

    func testEveryPoolPolicyAndReadAheadGivesTheResidentBits() throws {
        for f in Self.files {
            let source = try GGUFWeights(path: try path(f))
            let m = source.config.moe!, total = source.config.layers * m.experts
            let want = try run(try LlamaModel(source: source, threads: 2))
            for slots in [m.used, m.used + 1, total / 2, total] {
                for policy in ExpertCache.Policy.allCases {
                    for width in [0, m.used, m.experts] {
                        let model = try LlamaModel(source: source, threads: 2)
                        let cache = try ExpertCache(source: source, slots: slots, policy: policy, prefetchWidth: width)
                        model.expertSupplier = cache
                        let what = "\(f) slots \(slots) \(policy) read-ahead \(width)"
                        XCTAssertEqual(try run(model), want, what)
                        cache.stop()
                        let r = cache.report()
                        let demands = r["demands"] as! Int, hits = r["hits"] as! Int
                        XCTAssertGreaterThan(demands, 0, what)
                        XCTAssertLessThanOrEqual(hits, demands, what)
                        XCTAssertLessThanOrEqual(r["prefetch_used"] as! Int, r["prefetch_issued"] as! Int, what)
                        if width == 0 { XCTAssertEqual(r["prefetch_issued"] as! Int, 0, what) }
                        // With every expert fitting, each is read once: the misses are the distinct experts used.
                        if slots == total && width == 0 {
                            XCTAssertLessThanOrEqual(demands - hits, total, what)
                        }
                        if slots == m.used { XCTAssertGreaterThan(demands - hits, total / 2, "\(what): a small pool misses") }
                    }
                }
            }
        }
    }

    /// The hit-rate model: the run's routing replayed through Planning's pool simulation gives the
    /// run's hits exactly (no read-ahead), for every pool size and policy.
    func testTheReplayedRoutingPredictsTheHitsExactly() throws {
        for f in ["mixtral.f32.gguf", "qwen2moe.f32.gguf"] {
            let source = try GGUFWeights(path: try path(f))
            let m = source.config.moe!, total = source.config.layers * m.experts
            for slots in [m.used, m.used + 3, total - 1] {
                for policy in ExpertPolicy.allCases {
                    let model = try LlamaModel(source: source, threads: 2)
                    let cache = try ExpertCache(source: source, slots: slots, policy: policy, prefetchWidth: 0)
                    model.expertSupplier = cache
                    var trace: [RoutingStep] = []
                    model.onRouting = { trace.append(RoutingStep(layer: $0, rows: $1)) }
                    _ = try run(model)
                    let sim = ExpertPoolSimulation(trace: trace, slots: slots, policy: policy, layers: source.config.layers)
                    let r = cache.report()
                    XCTAssertEqual(sim.demands, r["demands"] as! Int, "\(f) \(slots) \(policy)")
                    XCTAssertEqual(sim.hits, r["hits"] as! Int, "\(f) \(slots) \(policy)")
                    XCTAssertEqual(sim.decodeSteps, ids.count - 24)
                    // The trace survives its file form.
                    let file = FileManager.default.temporaryDirectory.appendingPathComponent("rt-\(UUID().uuidString).jsonl")
                    try Data(trace.map { RoutingTrace.line($0) + "\n" }.joined().utf8).write(to: file)
                    defer { try? FileManager.default.removeItem(at: file) }
                    XCTAssertEqual(try RoutingTrace.read(path: file.path, layers: source.config.layers, experts: m.experts), trace)
                }
            }
        }
    }

    func testAPoolSmallerThanOneTokensExpertsIsRefused() throws {
        let source = try GGUFWeights(path: try path("mixtral.f32.gguf"))
        XCTAssertThrowsError(try ExpertCache(source: source, slots: 1, policy: .lru, prefetchWidth: 0)) {
            XCTAssertTrue("\($0)".contains("below the 2 experts a token uses"), "\($0)")
        }
    }
}
