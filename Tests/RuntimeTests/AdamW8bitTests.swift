// 8-bit AdamW against torchao 0.18's AdamW8bit (Fixtures/adamw8bit, scripts/fixtures/make_adamw8bit_fixtures.py):
// its two dynamic maps, its block quantization of given values, three updates from given gradients (exact to an
// ulp or two), and 10 steps on SmolLM2-135M (B=2 × T=64, Hamlet windows, weight decay 0.1): losses, gradient
// norms, and after the 10 steps sampled weights, the moments' norms and, for a few tensors, the codes and scales
// of their first two blocks.
import Foundation
import Kernels
import Models
import Runtime
import Tensors
import XCTest

final class AdamW8bitTests: XCTestCase {
    static let refPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/adamw8bit/reference.json").path

    func reference() throws -> [String: Any] {
        guard FileManager.default.fileExists(atPath: Self.refPath) else {
            XCTFail("\(Self.refPath) not found")
            throw CocoaError(.fileNoSuchFile)
        }
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.refPath))) as! [String: Any]
    }

    func testDynamicMapsAreTorchaosWithinAnUlp() throws {
        let ref = try reference()
        for (mine, key) in [(DynamicMap.signed, "qmap_signed"), (DynamicMap.unsigned, "qmap_unsigned")] {
            let theirs = (ref[key] as! [Double]).map(Float.init)
            XCTAssertEqual(mine.count, 256)
            XCTAssertEqual(mine, mine.sorted())
            var same = 0
            for (a, b) in zip(mine, theirs) {
                XCTAssertLessThanOrEqual(abs(a - b), 2 * max(a.ulp, b.ulp), "\(key): \(a) vs \(b)")
                if a == b { same += 1 }
            }
            // Most entries are equal; the rest differ by torch's fp32 linspace rounding (an ulp or two).
            XCTAssertGreaterThan(same, 150, key)
        }
        XCTAssertEqual(DynamicMap.signed.first!, -DynamicMap.signed[254], "signed map is symmetric but for 1")
        XCTAssertEqual(DynamicMap.unsigned.first!, 0)
        XCTAssertEqual(DynamicMap.signed.last!, 1)
    }

    func testBlockQuantizationGivesTorchaosCodes() throws {
        let ref = try reference()
        let q = ref["quantize"] as! [String: Any]
        let input = (q["input"] as! [Double]).map(Float.init)
        for (key, map) in [("signed", DynamicMap.signed), ("unsigned", DynamicMap.unsigned)] {
            let x = key == "signed" ? input : input.map(abs)
            let theirs = q[key] as! [String: Any]
            let codes = theirs["codes"] as! [Int], scales = (theirs["scales"] as! [Double]).map(Float.init)
            for b in 0..<x.count / 256 {
                let block = Array(x[b * 256..<(b + 1) * 256])
                let scale = max(block.map(abs).max()!, 1e-12)
                XCTAssertEqual(scale, scales[b], "\(key) block \(b) scale")
                var differ = 0
                for (j, v) in block.enumerated() where Int(DynamicMap.code(v / scale, map)) != codes[b * 256 + j] { differ += 1 }
                XCTAssertEqual(differ, 0, "\(key) block \(b): \(differ) codes differ")
                // The whole block at once, as the update quantizes it, at every SIMD level this CPU has.
                for level in 0...Matmul.bestSIMDLevel {
                    Matmul.simdLevel = level
                    defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
                    XCTAssertEqual(DynamicMap.codes(block, scale: scale, map).map(Int.init), Array(codes[b * 256..<(b + 1) * 256]),
                                   "\(key) block \(b), SIMD level \(level)")
                }
            }
        }
    }

    /// Every SIMD level gives the scalar search's codes: on the maps' own values and their neighbours,
    /// the midpoints between them (where rounding turns), values past ±1, zeros, and random values.
    func testQuantizerIsTheSameAtEverySIMDLevel() {
        for map in [DynamicMap.signed, DynamicMap.unsigned] {
            var x: [Float] = [0, -0, 1, -1, 1.5, -1.5, .infinity, -.infinity, .nan, .leastNonzeroMagnitude]
            for (i, q) in map.enumerated() {
                x += [q, q.nextUp, q.nextDown]
                if i + 1 < map.count { let mid = (map[i + 1] - q) * 0.5 + q; x += [mid, mid.nextUp, mid.nextDown] }
            }
            var g = SystemRandomNumberGenerator()
            x += (0..<5000).map { _ in Float.random(in: -1.1...1.1, using: &g) }
            for scale: Float in [1, 0.37, 3e-5] {
                let input = x.map { $0 * scale }
                Matmul.simdLevel = 0
                let scalar = DynamicMap.codes(input, scale: scale, map)
                for level in 1...max(1, Matmul.bestSIMDLevel) where level <= Matmul.bestSIMDLevel {
                    Matmul.simdLevel = level
                    XCTAssertEqual(DynamicMap.codes(input, scale: scale, map), scalar, "SIMD level \(level), scale \(scale)")
                }
                Matmul.simdLevel = Matmul.bestSIMDLevel
            }
        }
    }

    func testStateIsBytesAndBlockScalesForWholeBlocksOfAtLeast4096() {
        let o = AdamW8bit()
        XCTAssertEqual(o.stateBuffers(count: 4096).map(\.name), ["m.codes", "m.scales", "v.codes", "v.scales"])
        XCTAssertEqual(o.stateBytes(count: 4096), 2 * 4096 + 2 * 16 * 4)
        XCTAssertEqual(o.stateBuffers(count: 4095).map(\.name), ["m", "v"])       // too small
        XCTAssertEqual(o.stateBuffers(count: 4096 + 128).map(\.name), ["m", "v"]) // not whole blocks
        XCTAssertEqual(AdamW().stateBytes(count: 4096), 8 * 4096)
    }

    /// Three updates from given gradients, free of a model's trajectory: weights within an ulp or two, codes and
    /// scales equal (a code may differ only where a value lands within an ulp of a rounding boundary).
    func testUpdatesFromGivenGradientsAreTorchaos() throws {
        let ref = try reference()
        let cases = ref["updates"] as! [[String: Any]]
        XCTAssertEqual(cases.count, 2)
        let run = ref["run"] as! [String: Any], betas = run["betas"] as! [Double]
        let opt = AdamW8bit(beta1: Float(betas[0]), beta2: Float(betas[1]), eps: Float(run["eps"] as! Double),
                            weightDecay: Float(run["weight_decay"] as! Double))
        for c in cases {
            let p0 = (c["initial"] as! [Double]).map(Float.init), n = p0.count
            let buffers = opt.stateBuffers(count: n)
            let state = buffers.map { b -> UnsafeMutableRawPointer in
                let s = UnsafeMutableRawPointer.allocate(byteCount: b.bytes, alignment: 64)
                s.initializeMemory(as: UInt8.self, repeating: 0, count: b.bytes)
                return s
            }
            defer { state.forEach { $0.deallocate() } }
            var p = p0
            for (t, g) in (c["gradients"] as! [[Double]]).enumerated() {
                let grad = g.map(Float.init)
                p.withUnsafeMutableBufferPointer { pb in
                    opt.update(pb.baseAddress!, gradient: grad, state: state, count: n, range: 0..<n,
                               lr: Float(c["lr"] as! Double), step: t + 1)
                }
            }
            let want = (c["weights"] as! [Double]).map(Float.init)
            // Rounding differs from torch's in the last bits (fused or not, in another order): within a few
            // ulps of the parameter's largest weight, a thousandth of one step (lr).
            let ulp = want.map(abs).max()!.ulp
            var worst: Float = 0
            for i in 0..<n { worst = max(worst, abs(p[i] - want[i]) / ulp) }
            XCTAssertLessThanOrEqual(worst, 4, "\(n) weights: worst \(worst) ulps of the largest from torchao")
            for (i, b) in buffers.enumerated() {
                switch b.element {
                case .u8:
                    let mine = UnsafeBufferPointer(start: state[i].assumingMemoryBound(to: UInt8.self), count: b.count)
                    let theirs = c[b.name.replacingOccurrences(of: ".", with: "_")] as! [Int]
                    let differ = zip(mine, theirs).filter { Int($0) != $1 }.count
                    XCTAssertLessThanOrEqual(differ, 2, "\(n) \(b.name): \(differ) codes differ")
                default:
                    let mine = UnsafeBufferPointer(start: state[i].assumingMemoryBound(to: Float.self), count: b.count)
                    let theirs = (c[b.name.replacingOccurrences(of: ".", with: "_")] as! [Double]).map(Float.init)
                    for (a, t) in zip(mine, theirs) { XCTAssertEqual(a, t, accuracy: 2 * t.ulp, "\(n) \(b.name)") }
                }
            }
        }
    }

    /// The reference order of attn_q/attn_k read from a GGUF is the Hugging Face layout `RopeRowOrder` converts to.
    func testReferenceOrderIsHuggingFacesRows() throws {
        let heads = 3, headDim = 8, cols = 5
        let stored = (0..<heads * headDim * cols).map(Float.init)
        let hf = try RopeRowOrder.toHalfSplit(stored, heads: heads, cols: cols)
        let order = ReferenceOrder(headDim: headDim, columns: cols)
        for i in hf.indices { XCTAssertEqual(stored[order.stored(i)], hf[i], "index \(i)") }
        XCTAssertNotEqual(hf, stored)
    }

    /// Planning's byte counts are what the optimizers allocate.
    func testPlanningCountsWhatTheOptimizersAllocate() {
        let pairs: [(OptimizerStateSize, any Optimizer)] = [(.adamw, AdamW()), (.adamw8bit, AdamW8bit()), (.momentum, SGD()),
                                                            (.none, SGD(momentum: 0))]
        for (size, optimizer) in pairs {
            for count in [1, 576, 4095, 4096, 4352, 4608, 331_776, 28_311_552] {
                XCTAssertEqual(size.bytes(count: count), optimizer.stateBytes(count: count), "\(size) \(count)")
            }
        }
        XCTAssertEqual(OptimizerStateSize(optimizer: "adamw8bit"), .adamw8bit)
        XCTAssertEqual(OptimizerStateSize(optimizer: "sgd", momentum: 0), .none)
    }

    /// Updates split at block boundaries across threads give the same bytes as one pass.
    func testPiecesOfAnUpdateAreBitIdenticalToOnePass() {
        let n = 256 * 40, opt = AdamW8bit(weightDecay: 0.1)
        func run(pieces: [Range<Int>]) -> ([Float], [UInt8]) {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: n), g = UnsafeMutablePointer<Float>.allocate(capacity: n)
            var r2 = RTRNG(9)
            p.initialize(from: r2.floats(n), count: n)
            let state = opt.stateBuffers(count: n).map { b -> UnsafeMutableRawPointer in
                let s = UnsafeMutableRawPointer.allocate(byteCount: b.bytes, alignment: 64)
                s.initializeMemory(as: UInt8.self, repeating: 0, count: b.bytes)
                return s
            }
            defer { p.deallocate(); g.deallocate(); state.forEach { $0.deallocate() } }
            var r3 = RTRNG(11)
            for t in 1...3 {
                g.initialize(from: r3.floats(n, 0.01), count: n)
                for r in pieces { opt.update(p, gradient: g, state: state, count: n, range: r, lr: 1e-3, step: t) }
            }
            return (Array(UnsafeBufferPointer(start: p, count: n)),
                    Array(UnsafeBufferPointer(start: state[0].assumingMemoryBound(to: UInt8.self), count: n)))
        }
        let whole = run(pieces: [0..<n])
        let split = run(pieces: [0..<256 * 7, 256 * 7..<256 * 30, 256 * 30..<n].reversed())
        XCTAssertEqual(whole.0.map(\.bitPattern), split.0.map(\.bitPattern))
        XCTAssertEqual(whole.1, split.1)
        XCTAssertGreaterThan(Set(whole.1).count, 100, "codes spread over the map")
    }

    func testTenStepsFollowTorchao() throws {
        let ref = try reference()
        let modelPath = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: modelPath) else { XCTFail("\(modelPath) not found: run scripts/fetch-assets.sh"); return }
        let run = ref["run"] as! [String: Any]
        setTrainingThreads(2)
        var o = TrainingOptions()
        o.optimizer = "adamw8bit"
        o.batch = run["batch"] as! Int; o.seqLen = run["seq_len"] as! Int; o.steps = run["steps"] as! Int
        o.lr = Float(run["lr"] as! Double); o.weightDecay = Float(run["weight_decay"] as! Double)
        let betas = run["betas"] as! [Double]
        o.beta1 = Float(betas[0]); o.beta2 = Float(betas[1]); o.eps = Float(run["eps"] as! Double)
        let model = try TrainableLlama(source: GGUFWeights(path: modelPath))
        let windows = try TokenWindows(tokens: hamletIDs, seqLen: o.seqLen, vocabSize: model.config.vocabSize)
        let session = try TrainingSession(model: model, data: windows, options: o)
        // A quarter of fp32 AdamW's state: 2 bytes per weight plus a scale per 256, fp32 for the norms.
        XCTAssertLessThan(Double(session.optimizerState.bytes), 0.26 * Double(8 * model.parameterCount))

        // The update itself is checked exactly above (testUpdatesFromGivenGradientsAreTorchaos). Over 10 steps the
        // runs part: gradients differ from torch's in the last bits (fp32 sums in another order), a moment near a
        // rounding boundary takes the neighbouring code, and at the unsigned map's coarse low end (two codes per
        // decade) that changes the weight's step by a good fraction; the losses drift apart by ~1e-4 from step 3.
        // The tolerances below are about three times the drift measured, and the test that the run is 8-bit
        // AdamW at all is the state it ends with: the codes stand for torchao's values to a few % of the block scale.
        for (k, step) in (ref["steps"] as! [[String: Double]]).enumerated() {
            let r = try session.trainStep()
            print("adamw8bit parity: step \(k + 1) loss \(r.loss) vs \(step["loss"]!), grad norm \(r.gradNorm) vs \(step["grad_norm"]!)")
            XCTAssertEqual(Double(r.loss), step["loss"]!, accuracy: 3e-4 * step["loss"]!, "step \(k + 1) loss")
            XCTAssertEqual(r.gradNorm, step["grad_norm"]!, accuracy: 5e-3 * step["grad_norm"]!, "step \(k + 1) gradient norm")
        }

        let state = session.optimizerState
        var worstCodes = 0.0, worstWeight = 0.0
        for (i, e) in model.layout.entries.enumerated() {
            guard let t = (ref["after"] as! [String: [String: Any]])[e.name] else { XCTFail("\(e.name) not in the reference"); continue }
            let w = try model.weight(e.name)
            // Adam moves a weight by about lr a step: at most ~1e-3 in these 10 steps.
            for s in t["weights"] as! [[Double]] {
                worstWeight = max(worstWeight, abs(Double(w[Int(s[0])]) - s[1]))
                XCTAssertEqual(Double(w[Int(s[0])]), s[1], accuracy: 2e-4, "\(e.name)[\(Int(s[0]))]")
            }
            let buffers = state.state(of: i), specs = state.slots[i].map(\.buffer)
            let quantized = AdamW8bit.quantizes(count: e.elements)
            XCTAssertEqual(quantized, t["m_quantized"] as! Bool, e.name)
            for (moment, signed) in [("m", true), ("v", false)] {
                let values = dequantized(moment, specs: specs, buffers: buffers, count: e.elements, signed: signed)
                let norm = values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                let refNorm = t["\(moment)_norm"] as! Double
                XCTAssertEqual(norm, refNorm, accuracy: 0.05 * refNorm + 1e-30, "\(e.name) \(moment) norm")
                if let codes = t["\(moment)_codes"] as? [Int], let scales = t["\(moment)_scales"] as? [Double] {
                    let mine = buffers[specs.firstIndex { $0.name == "\(moment).codes" }!].assumingMemoryBound(to: UInt8.self)
                    let myScales = buffers[specs.firstIndex { $0.name == "\(moment).scales" }!].assumingMemoryBound(to: Float.self)
                    // The trajectories part in the last bits from the first gradient (fp32 sums in another order),
                    // and a value near a rounding boundary then takes the neighbouring code, which the following
                    // steps carry on: compare the values the codes stand for, against the block's scale.
                    let map = signed ? DynamicMap.signed : DynamicMap.unsigned
                    var differ = 0, worst = 0.0, sum = 0.0
                    for j in 0..<codes.count {
                        if Int(mine[j]) != codes[j] { differ += 1 }
                        let scale = scales[j / 256]
                        let d = abs(Double(map[Int(mine[j])]) * Double(myScales[j / 256]) - Double(map[codes[j]]) * scale) / scale
                        worst = max(worst, d); sum += d
                    }
                    print("adamw8bit parity: \(e.name) \(moment): \(differ) of \(codes.count) codes differ, values within \(worst) of the block scale (mean \(sum / Double(codes.count)))")
                    worstCodes = max(worstCodes, Double(differ) / Double(codes.count))
                    XCTAssertLessThanOrEqual(worst, 0.15, "\(e.name) \(moment): a value is \(worst) of its block's scale away")
                    XCTAssertLessThanOrEqual(sum / Double(codes.count), 0.01, "\(e.name) \(moment): mean difference")
                    for b in 0..<2 { XCTAssertEqual(Double(myScales[b]), scales[b], accuracy: 0.05 * scales[b], "\(e.name) \(moment) scale \(b)") }
                }
                if let samples = t["\(moment)_samples"] as? [[Double]] {
                    // fp32 moments (norm weights): the same drift, against the tensor's largest sampled value.
                    let scale = samples.map { abs($0[1]) }.max()!
                    var worst = 0.0
                    for s in samples { worst = max(worst, abs(Double(values[Int(s[0])]) - s[1]) / scale) }
                    print("adamw8bit parity: \(e.name) \(moment) (fp32): samples within \(worst) of the largest")
                    XCTAssertLessThanOrEqual(worst, 0.02, "\(e.name) \(moment)")
                }
            }
        }
        print("adamw8bit parity: worst fraction of codes differing \(worstCodes), worst weight difference \(worstWeight)")
    }

    /// A moment as fp32, from its codes and scales or its fp32 buffer.
    func dequantized(_ moment: String, specs: [StateBuffer], buffers: [UnsafeMutableRawPointer], count: Int, signed: Bool) -> [Float] {
        if let i = specs.firstIndex(where: { $0.name == moment }) {
            return Array(UnsafeBufferPointer(start: buffers[i].assumingMemoryBound(to: Float.self), count: count))
        }
        let codes = buffers[specs.firstIndex { $0.name == "\(moment).codes" }!].assumingMemoryBound(to: UInt8.self)
        let scales = buffers[specs.firstIndex { $0.name == "\(moment).scales" }!].assumingMemoryBound(to: Float.self)
        let map = signed ? DynamicMap.signed : DynamicMap.unsigned
        return (0..<count).map { map[Int(codes[$0])] * scales[$0 / 256] }
    }
}
