// Hugging Face `tokenizer.json` (the `tokenizers` library's format, as `save_pretrained` writes
// it) mapped onto the two algorithms Offload already runs: byte-level BPE (a ByteLevel
// pre-tokenizer, after Split patterns and Digits steps Offload has) and SentencePiece-style BPE
// (Metaspace, or the normalizer that writes spaces as "▁", with byte_fallback). Anything else is
// refused with an error naming the field. Not a `tokenizers` port: no other models, normalizers
// or pre-tokenizers.

import Foundation
import Tensors

extension Tokenizer {
    /// Builds the tokenizer of a Hugging Face `tokenizer.json`, reading `tokenizer_config.json`
    /// beside it when there is one (`bos_token`, `eos_token`).
    ///
    /// Ids are the ones `AutoTokenizer.from_pretrained(folder)(text)["input_ids"]` gives
    /// (transformers 5): added tokens are cut out of the text leftmost-longest first (`special`
    /// ones are control tokens, matched only with `parseSpecial`; the others always), merges
    /// apply by rank, and BOS is added when the post-processor's template puts a token before
    /// the text.
    /// - Note: As transformers 5 does when a folder has a tokenizer.json, `add_bos_token` and
    ///   `add_eos_token` in tokenizer_config.json are not read: the post-processor decides. Tokens
    ///   the template puts after the text (EOS) are not appended, as for GGUF vocabularies.
    /// - Throws: `OffloadError` naming the file and the field when the file is not JSON, its model
    ///   is not BPE, or its normalizer, pre-tokenizer or post-processor is one Offload does not run.
    public convenience init(huggingFaceJSON path: String) throws {
        try self.init(parts: HuggingFaceTokenizerFile(path: path).parts())
    }
}

/// Reads one tokenizer.json into `Tokenizer.Parts`.
private struct HuggingFaceTokenizerFile {
    let path: String

    func fail(_ message: String) -> OffloadError { OffloadError("[tokenizer] \(path): \(message)") }

    /// An added token as tokenizer.json lists it.
    struct AddedToken {
        let id: Int
        let content: String
        let special: Bool
        let lstrip: Bool
        let rstrip: Bool
        let normalized: Bool
    }

    func parts() throws -> Tokenizer.Parts {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw fail("cannot read: \(error.localizedDescription)")
        }
        let root: OrderedJSON
        do { root = try OrderedJSON.parse(data) } catch { throw fail("not valid JSON: \(error)") }
        guard root.object != nil else { throw fail("expected a JSON object at the top, found \(root.kind)") }
        guard let model = root.member("model"), model.object != nil else {
            throw fail("model is missing or not an object")
        }
        let modelType = model.member("type")?.string ?? (model.member("merges") != nil ? "BPE" : "(none)")
        guard modelType == "BPE" else {
            let kinds = ["WordPiece": " (BERT-style)", "Unigram": " (SentencePiece Unigram, T5-style)", "WordLevel": ""]
            throw fail("model.type '\(modelType)'\(kinds[modelType] ?? "") is not supported; supported: BPE "
                       + "(byte-level, or SentencePiece-style with byte_fallback)")
        }
        try checkModelOptions(model)

        // Vocabulary and added tokens, by id. Keys are compared as bytes, never as Swift Strings.
        guard let vocab = model.member("vocab")?.object else { throw fail("model.vocab is missing or not an object") }
        var idOfText = [[UInt8]: Int](minimumCapacity: vocab.count)
        var maxID = -1
        for (text, value) in vocab {
            guard let id = value.int, id >= 0, id < 1 << 24 else {
                throw fail("model.vocab[\(quoted(text))] is \(value.kind == "an integer" ? "\(value.int!)" : value.kind), not a token id")
            }
            idOfText[Array(text.utf8)] = id
            maxID = max(maxID, id)
        }
        let added = try addedTokens(root)
        let n = max(maxID, added.map(\.id).max() ?? -1) + 1
        guard n > 0 else { throw fail("model.vocab is empty") }
        var tokens = [String](repeating: "", count: n)
        var types = [Tokenizer.TokenType](repeating: .undefined, count: n)
        var inModel = [Bool](repeating: false, count: n)
        for (text, value) in vocab {
            let id = value.int!
            if inModel[id] { throw fail("model.vocab gives id \(id) to both \(quoted(tokens[id])) and \(quoted(text))") }
            (tokens[id], types[id], inModel[id]) = (text, .normal, true)
        }
        for (k, t) in added.enumerated() {
            if inModel[t.id] && !tokens[t.id].utf8.elementsEqual(t.content.utf8) {
                throw fail("added_tokens[\(k)] \(quoted(t.content)) has id \(t.id), which model.vocab gives to \(quoted(tokens[t.id]))")
            }
            tokens[t.id] = t.content
            types[t.id] = t.special ? .control : .userDefined
        }
        let outsideModel = Set((0..<n).filter { !inModel[$0] })
        func tokenID(_ text: String) -> Int? {
            if let t = added.last(where: { $0.content.utf8.elementsEqual(text.utf8) }) { return t.id }
            return idOfText[Array(text.utf8)]
        }
        if let unk = model.member("unk_token")?.string {
            guard let id = tokenID(unk) else { throw fail("model.unk_token \(quoted(unk)) is not a token") }
            if types[id] == .normal { types[id] = .unknown }
        }
        let merges = try mergePairs(model, idOfText: idOfText)

        // The algorithm, from the normalizer and the pre-tokenizer.
        let normalizer = root.member("normalizer") ?? .null
        let preTokenizer = root.member("pre_tokenizer") ?? .null
        let byteFallback = model.member("byte_fallback")?.bool ?? false
        let ignoreMerges = model.member("ignore_merges")?.bool ?? false
        let encoder: Tokenizer.FragmentEncoder, pieces: [[UInt8]], preName: String
        let spacePrefix: Tokenizer.SpacePrefixRule
        var normalizesNFC = false
        if let rule = try sentencePieceRule(normalizer: normalizer, preTokenizer: preTokenizer) {
            guard byteFallback else {
                throw fail("model.byte_fallback is false; a SentencePiece-style (▁) vocabulary is read only with byte fallback")
            }
            guard !ignoreMerges else { throw fail("model.ignore_merges is true; not supported for a SentencePiece-style vocabulary") }
            if rule.prefix == .everyFragment, let t = added.first(where: { $0.normalized }) {
                throw fail("added_tokens: \(quoted(t.content)) has normalized: true, which the normalizer "
                           + "\(normalizer.member("type")?.string ?? "") would rewrite; not supported")
            }
            for i in 0..<n where types[i] == .normal && Tokenizer.byteTokenValue(tokens[i]) != nil { types[i] = .byte }
            // Tokens outside the BPE vocabulary get a text no valid UTF-8 holds, so merging never forms them.
            let texts: [[UInt8]] = (0..<n).map { (i: Int) -> [UInt8] in
                if inModel[i] { return Array(tokens[i].utf8) }
                let b2 = UInt8(truncatingIfNeeded: i >> 16), b1 = UInt8(truncatingIfNeeded: i >> 8)
                return [0xFF, b2, b1, UInt8(truncatingIfNeeded: i)]
            }
            var ranks = [UInt64: (rank: Int32, merged: Int32)](minimumCapacity: merges.count)
            for (rank, m) in merges.enumerated() {
                ranks[UInt64(UInt32(m.left)) << 32 | UInt64(UInt32(m.right))] = (Int32(rank), Int32(m.merged))
            }
            let unknownID = model.member("unk_token")?.string.flatMap(tokenID) ?? -1
            let loaded = SentencePiece.build(texts: texts, pieceTexts: tokens.map { Array($0.utf8) }, tokens: tokens,
                                             types: types, scores: [], mergeRanks: ranks, unknownID: Int32(unknownID),
                                             addSpacePrefix: rule.prefix != .never)
            (encoder, pieces, preName, spacePrefix) = (.sentencePiece(loaded.spm), loaded.pieces, rule.name, rule.prefix)
        } else {
            let (pre, name) = try byteLevelPreTokenizer(preTokenizer)
            normalizesNFC = try byteLevelNormalizer(normalizer)
            let loaded = ByteLevelBPE.build(tokens: tokens, types: types,
                                            merges: merges.map { (tokens[$0.left], tokens[$0.right]) },
                                            pre: pre, ignoreMerges: ignoreMerges, outsideModel: outsideModel)
            (encoder, pieces, preName, spacePrefix) = (.byteLevelBPE(loaded.bpe), loaded.pieces, name, .never)
        }

        // BOS and EOS: the post-processor's template decides whether BOS is added;
        // tokenizer_config.json names them.
        let prefix = try templatePrefix(root.member("post_processor") ?? .null, field: "post_processor")
        let config = try tokenizerConfig(tokenID: tokenID)
        let bos = prefix ?? config.bos
        let eos = config.eos
        let eog = Tokenizer.endOfGeneration(tokens: tokens, eos: eos) { _, _ in }  // types stay as the file says

        let specials = added.filter { !$0.content.isEmpty }.map {
            Tokenizer.SpecialToken(bytes: Array($0.content.utf8), id: $0.id, rstrip: $0.rstrip, lstrip: $0.lstrip)
        }
        return Tokenizer.Parts(
            bosID: bos, eosID: eos, endOfGenerationIDs: eog, addsBOSByDefault: prefix != nil, preName: preName,
            types: types, tokens: tokens, pieces: pieces, encoder: encoder, specials: specials,
            removesLeadingSpace: spacePrefix != .never, spacePrefix: spacePrefix,
            specialMatching: .leftmostLongest, normalizesNFC: normalizesNFC)
    }

    // MARK: model

    /// Refuses BPE options that change what the merges give.
    func checkModelOptions(_ model: OrderedJSON) throws {
        if let d = model.member("dropout"), !d.isNull, (d.double ?? 1) != 0 {
            throw fail("model.dropout is set; BPE dropout (random merges) is not supported")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model.member(key), !v.isNull, v.string != "" {
                throw fail("model.\(key) is \(v.string.map { quoted($0) } ?? v.kind); not supported (only byte-level and ▁ vocabularies are)")
            }
        }
    }

    /// The merges as token ids, in rank order. A pair listed twice keeps its last rank, as in `tokenizers`.
    func mergePairs(_ model: OrderedJSON, idOfText: [[UInt8]: Int]) throws -> [(left: Int, right: Int, merged: Int)] {
        guard let list = model.member("merges")?.array else { throw fail("model.merges is missing or not an array") }
        var pairs: [(left: Int, right: Int, merged: Int)] = []
        pairs.reserveCapacity(list.count)
        for (k, m) in list.enumerated() {
            let a: String, b: String
            if let s = m.string {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw fail("model.merges[\(k)] \(quoted(s)) is not two tokens separated by one space")
                }
                (a, b) = (String(parts[0]), String(parts[1]))
            } else if let pair = m.array, pair.count == 2, let x = pair[0].string, let y = pair[1].string {
                (a, b) = (x, y)
            } else {
                throw fail("model.merges[\(k)] is \(m.kind); expected \"left right\" or [\"left\", \"right\"]")
            }
            guard let l = idOfText[Array(a.utf8)] else { throw fail("model.merges[\(k)]: \(quoted(a)) is not in model.vocab") }
            guard let r = idOfText[Array(b.utf8)] else { throw fail("model.merges[\(k)]: \(quoted(b)) is not in model.vocab") }
            guard let merged = idOfText[Array(a.utf8) + Array(b.utf8)] else {
                throw fail("model.merges[\(k)]: \(quoted(a + b)) (the merge's result) is not in model.vocab")
            }
            pairs.append((l, r, merged))
        }
        var seen = Set<UInt64>(), keep = [Bool](repeating: true, count: pairs.count)
        for k in stride(from: pairs.count - 1, through: 0, by: -1) {
            if !seen.insert(UInt64(pairs[k].left) << 32 | UInt64(pairs[k].right)).inserted { keep[k] = false }
        }
        return pairs.indices.filter { keep[$0] }.map { pairs[$0] }
    }

    func addedTokens(_ root: OrderedJSON) throws -> [AddedToken] {
        guard let node = root.member("added_tokens"), !node.isNull else { return [] }
        guard let list = node.array else { throw fail("added_tokens is \(node.kind), not an array") }
        return try list.enumerated().map { k, t in
            guard t.object != nil, let id = t.member("id")?.int, id >= 0, id < 1 << 24 else {
                throw fail("added_tokens[\(k)] has no token id")
            }
            guard let content = t.member("content")?.string else { throw fail("added_tokens[\(k)].content is missing or not a string") }
            func flag(_ key: String, _ fallback: Bool) throws -> Bool {
                guard let v = t.member(key), !v.isNull else { return fallback }
                guard let b = v.bool else { throw fail("added_tokens[\(k)].\(key) is \(v.kind), not a boolean") }
                return b
            }
            let special = try flag("special", false)
            if try flag("single_word", false) {
                throw fail("added_tokens[\(k)] \(quoted(content)): single_word: true is not supported")
            }
            return AddedToken(id: id, content: content, special: special, lstrip: try flag("lstrip", false),
                              rstrip: try flag("rstrip", false), normalized: try flag("normalized", !special))
        }
    }

    // MARK: normalizer and pre-tokenizer

    /// For a SentencePiece-style vocabulary (Metaspace pre-tokenizer, or the normalizer
    /// `Prepend("▁")` + `Replace(" ", "▁")`), which fragments get a "▁" in front; nil otherwise.
    func sentencePieceRule(normalizer: OrderedJSON, preTokenizer: OrderedJSON) throws
        -> (prefix: Tokenizer.SpacePrefixRule, name: String)? {
        let preSteps = flatten(preTokenizer, field: "pre_tokenizer", list: "pretokenizers")
        if let (metaspace, field) = preSteps.first(where: { $0.node.member("type")?.string == "Metaspace" }) {
            guard preSteps.count == 1 else {
                throw fail("\(field): Metaspace with other pre-tokenizers (\(typeNames(preSteps))) is not supported")
            }
            guard normalizer.isNull else {
                throw fail("normalizer \(typeName(normalizer)) with a Metaspace pre-tokenizer is not supported")
            }
            if let r = metaspace.member("replacement")?.string, r != "▁" {
                throw fail("\(field).replacement \(quoted(r)) is not supported; only \"▁\"")
            }
            if metaspace.member("split")?.bool ?? true {
                throw fail("\(field).split is true (each word encoded on its own); not supported")
            }
            let scheme = metaspace.member("prepend_scheme")?.string
                ?? ((metaspace.member("add_prefix_space")?.bool ?? true) ? "always" : "never")
            switch scheme {
            case "first": return (.metaspace(firstOnly: true), "metaspace-first")
            case "always": return (.metaspace(firstOnly: false), "metaspace-always")
            case "never": return (.never, "metaspace-never")
            default: throw fail("\(field).prepend_scheme \(quoted(scheme)) is not one of first, always, never")
            }
        }
        let steps = flatten(normalizer, field: "normalizer", list: "normalizers")
        let replaces = steps.contains { s in
            s.node.member("type")?.string == "Replace" && s.node.member("pattern")?.member("String")?.string == " "
                && s.node.member("content")?.string == "▁"
        }
        guard replaces else { return nil }
        let prepends = steps.contains { $0.node.member("type")?.string == "Prepend" && $0.node.member("prepend")?.string == "▁" }
        guard steps.count == (prepends ? 2 : 1) else {
            throw fail("normalizer: \(typeNames(steps)) is not supported; a SentencePiece-style normalizer is "
                       + "Prepend(\"▁\") and Replace(\" \", \"▁\") alone")
        }
        guard preTokenizer.isNull else {
            throw fail("pre_tokenizer \(typeName(preTokenizer)) after a normalizer that writes spaces as ▁ is not supported")
        }
        return prepends ? (.everyFragment, "prepend-normalizer") : (.never, "replace-normalizer")
    }

    /// The pre-tokenizer of a byte-level vocabulary: Split patterns and Digits steps Offload has,
    /// then ByteLevel last. Its name joins the steps' names ("digits+gpt-2", "llama3").
    func byteLevelPreTokenizer(_ node: OrderedJSON) throws -> (PreTokenizer, String) {
        let steps = flatten(node, field: "pre_tokenizer", list: "pretokenizers")
        guard let last = steps.last, last.node.member("type")?.string == "ByteLevel" else {
            throw fail(node.isNull
                ? "pre_tokenizer is null and the normalizer writes no ▁; neither byte-level nor SentencePiece-style, not supported"
                : "pre_tokenizer \(typeNames(steps)) does not end in ByteLevel and is not Metaspace; not supported")
        }
        var out: [PreTokenizeStep] = [], names: [String] = []
        for (k, (step, field)) in steps.enumerated() {
            let type = step.member("type")?.string ?? "(none)"
            switch type {
            case "ByteLevel":
                guard k == steps.count - 1 else { throw fail("\(field): ByteLevel before other pre-tokenizers is not supported") }
                if step.member("add_prefix_space")?.bool == true {
                    throw fail("\(field).add_prefix_space is true; not supported")
                }
                if step.member("use_regex")?.bool ?? true { out.append(.gpt2); names.append("gpt-2") }
            case "Split":
                let pattern = step.member("pattern")
                guard let regex = pattern?.member("Regex")?.string else {
                    throw fail("\(field).pattern is not a Regex; splitting on a fixed string is not supported")
                }
                guard let (name, s) = PreTokenizer.huggingFaceSplit(regex) else {
                    throw fail("\(field).pattern.Regex \(quoted(regex)) is not a pattern Offload knows; known: "
                               + PreTokenizer.huggingFaceSplits.map(\.name).joined(separator: ", "))
                }
                let behavior = step.member("behavior")?.string ?? "(none)"
                guard behavior == "Isolated" else { throw fail("\(field).behavior '\(behavior)' is not supported; only Isolated") }
                if step.member("invert")?.bool == true { throw fail("\(field).invert is true; not supported") }
                out.append(s)
                names.append(name)
            case "Digits":
                let individual = step.member("individual_digits")?.bool ?? false
                out.append(.isolate(individual ? .number : .numberRun))
                names.append(individual ? "digits" : "digit-runs")
            default:
                throw fail("\(field).type '\(type)' is not supported; supported before ByteLevel: Split (known patterns), Digits")
            }
        }
        return (PreTokenizer(steps: out), names.isEmpty ? "byte-level" : names.joined(separator: "+"))
    }

    /// Whether a byte-level vocabulary's normalizer is NFC (true) or none (false).
    func byteLevelNormalizer(_ node: OrderedJSON) throws -> Bool {
        let steps = flatten(node, field: "normalizer", list: "normalizers")
        for (step, field) in steps where step.member("type")?.string != "NFC" {
            throw fail("\(field).type '\(step.member("type")?.string ?? "(none)")' is not supported; supported: NFC or none")
        }
        return !steps.isEmpty
    }

    /// The steps of a possibly nested Sequence, each with the field path that names it.
    func flatten(_ node: OrderedJSON, field: String, list: String) -> [(node: OrderedJSON, field: String)] {
        if node.isNull { return [] }
        guard node.member("type")?.string == "Sequence", let items = node.member(list)?.array else { return [(node, field)] }
        return items.enumerated().flatMap { flatten($1, field: "\(field).\(list)[\($0)]", list: list) }
    }

    func typeName(_ node: OrderedJSON) -> String { node.member("type")?.string ?? node.kind }
    func typeNames(_ steps: [(node: OrderedJSON, field: String)]) -> String {
        steps.map { typeName($0.node) }.joined(separator: " + ")
    }

    // MARK: post-processor and tokenizer_config.json

    /// The token the post-processor's template puts before the text, nil when none.
    func templatePrefix(_ node: OrderedJSON, field: String) throws -> Int? {
        if node.isNull { return nil }
        let type = node.member("type")?.string ?? "(none)"
        switch type {
        case "ByteLevel": return nil
        case "Sequence":
            guard let items = node.member("processors")?.array else { throw fail("\(field).processors is missing") }
            var found: Int?
            for (k, item) in items.enumerated() {
                if let id = try templatePrefix(item, field: "\(field).processors[\(k)]") { found = found ?? id }
            }
            return found
        case "TemplateProcessing":
            guard let single = node.member("single")?.array else { throw fail("\(field).single is missing or not an array") }
            var prefix: [Int] = []
            for (k, piece) in single.enumerated() {
                if piece.member("Sequence") != nil { break }
                guard let name = piece.member("SpecialToken")?.member("id")?.string else {
                    throw fail("\(field).single[\(k)] is neither a SpecialToken nor a Sequence")
                }
                guard let ids = node.member("special_tokens")?.member(name)?.member("ids")?.array else {
                    throw fail("\(field).special_tokens has no \(quoted(name))")
                }
                prefix += ids.compactMap(\.int)
            }
            guard prefix.count <= 1 else {
                throw fail("\(field) puts \(prefix.count) tokens before the text; Offload adds at most one (BOS)")
            }
            return prefix.first
        default:
            throw fail("\(field).type '\(type)' is not supported; supported: TemplateProcessing, ByteLevel, Sequence")
        }
    }

    /// `bos_token` and `eos_token` of tokenizer_config.json beside the file, when it exists.
    func tokenizerConfig(tokenID: (String) -> Int?) throws -> (bos: Int?, eos: Int?) {
        let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("tokenizer_config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else { return (nil, nil) }
        func fail(_ message: String) -> OffloadError { OffloadError("[tokenizer] \(configPath): \(message)") }
        let root: OrderedJSON
        do { root = try OrderedJSON.parse(data) } catch { throw fail("not valid JSON: \(error)") }
        guard root.object != nil else { throw fail("expected a JSON object at the top, found \(root.kind)") }
        if root.member("split_special_tokens")?.bool == true {
            throw fail("split_special_tokens is true; not supported")
        }
        func id(_ key: String) throws -> Int? {
            guard let v = root.member(key), !v.isNull else { return nil }
            guard let text = v.string ?? v.member("content")?.string else { throw fail("\(key) is \(v.kind), not a token") }
            guard let id = tokenID(text) else { throw fail("\(key) \(quoted(text)) is not a token of the tokenizer.json") }
            return id
        }
        return (try id("bos_token"), try id("eos_token"))
    }

    func quoted(_ s: String) -> String { String(reflecting: s) }
}
