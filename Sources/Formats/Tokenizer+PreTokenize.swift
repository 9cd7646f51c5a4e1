// Pre-tokenizers of byte-level BPE vocabularies: split text into the words
// that BPE merges inside, exactly as llama.cpp does for each `tokenizer.ggml.pre`.
// Not a regex engine: each pattern is written by hand over Unicode scalars.

/// Unicode category flags of one code point, as llama.cpp's own tables define them
/// (`\p{N}` is Nd+Nl+No, `\p{M}` is Mn+Mc+Me, `\s` is a fixed list of 25 code points).
struct CodepointFlags: OptionSet, Sendable {
    let rawValue: UInt16
    static let undefined = CodepointFlags(rawValue: 0x0001)
    static let number = CodepointFlags(rawValue: 0x0002)
    static let letter = CodepointFlags(rawValue: 0x0004)
    static let separator = CodepointFlags(rawValue: 0x0008)
    static let mark = CodepointFlags(rawValue: 0x0010)
    static let punctuation = CodepointFlags(rawValue: 0x0020)
    static let symbol = CodepointFlags(rawValue: 0x0040)
    static let control = CodepointFlags(rawValue: 0x0080)
    static let whitespace = CodepointFlags(rawValue: 0x0100)

    /// Flags of every code point 0..<0x110000, built once per process (~2 MiB).
    /// - Note: Categories come from Swift's Unicode tables, which may be a newer
    ///   Unicode version than llama.cpp's; only code points assigned in between differ.
    static let table: [UInt16] = {
        var t = [UInt16](repeating: CodepointFlags.undefined.rawValue, count: 0x110000)
        for cp in 0..<UInt32(0x110000) {
            guard let s = Unicode.Scalar(cp) else {
                t[Int(cp)] = CodepointFlags.control.rawValue  // surrogates: Cs
                continue
            }
            let f: CodepointFlags
            switch s.properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: f = .letter
            case .nonspacingMark, .spacingMark, .enclosingMark: f = .mark
            case .decimalNumber, .letterNumber, .otherNumber: f = .number
            case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
                 .initialPunctuation, .finalPunctuation, .otherPunctuation: f = .punctuation
            case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: f = .symbol
            case .spaceSeparator, .lineSeparator, .paragraphSeparator: f = .separator
            case .control, .format, .surrogate, .privateUse: f = .control
            case .unassigned: f = .undefined
            @unknown default: f = .undefined
            }
            t[Int(cp)] = f.rawValue
        }
        let spaces: [Int] = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                             0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008,
                             0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
        for cp in spaces { t[cp] |= CodepointFlags.whitespace.rawValue }
        return t
    }()
}

/// One step of a pre-tokenizer. Steps run in order; each splits every current
/// piece further and never joins pieces (llama.cpp's `unicode_regex_split`).
enum PreTokenizeStep: Sendable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// `(?i:'s|…|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
    /// `digitRun` is 3 for llama3, 1 for qwen2; `marks` adds `\p{M}` to letter runs (qwen3.5).
    case llama3(digitRun: Int, marks: Bool)
    /// A pattern whose matches become pieces of their own; text between matches stays
    /// a piece too (a regex run with std::regex_iterator).
    case isolate(Pattern)

    enum Pattern: Sendable {
        case number                       // \p{N}
        case numberRun                    // \p{N}+
        case asciiDigits3                 // [0-9][0-9][0-9]
        case punctuationRun(extra: [UInt32])  // [\p{P}extra]+
        case newline                      // [\r\n]
        case optionalSpaceThen(CharClass) // \s?[class]+
        case trailingWhitespace           // \s+$
        case run(CharClass)               // [class]+
    }

    enum CharClass: Sendable {
        case letters                   // \p{L}
        case punctuation               // \p{P}
        case ranges([ClosedRange<UInt32>])
    }
}

/// Splits `cps` (code points with their `flags`) into word lengths, in code points.
struct PreTokenizer: Sendable {
    let steps: [PreTokenizeStep]

    /// Word boundaries as lengths in code points; they sum to `cps.count`.
    func split(_ cps: [UInt32], _ flags: [CodepointFlags]) -> [Int] {
        var pieces = cps.isEmpty ? [] : [cps.count]
        for step in steps {
            var out: [Int] = []
            out.reserveCapacity(max(pieces.count, cps.count / 3))
            var start = 0
            for n in pieces {
                switch step {
                case .gpt2: splitGPT2(cps, flags, start, start + n, &out)
                case .llama3(let d, let m): splitLlama3(cps, flags, start, start + n, digitRun: d, marks: m, &out)
                case .isolate(let p): isolate(p, cps, flags, start, start + n, &out)
                }
                start += n
            }
            pieces = out
        }
        return pieces
    }

    // MARK: hand-written system regexes (bounded to one piece [lo, hi))

    private func splitGPT2(_ cps: [UInt32], _ flags: [CodepointFlags], _ lo: Int, _ hi: Int, _ out: inout [Int]) {
        @inline(__always) func f(_ i: Int) -> CodepointFlags { i < hi ? flags[i] : [] }
        @inline(__always) func c(_ i: Int) -> UInt32 { i < hi ? cps[i] : 0xFFFF_FFFF }
        let apostrophe: UInt32 = 0x27, space: UInt32 = 0x20
        var prev = lo, pos = lo
        func emit(_ end: Int) { if end > prev { out.append(end - prev) }; prev = end; pos = end }
        while pos < hi {
            let cp = cps[pos]
            if cp == apostrophe && pos + 1 < hi {
                let n1 = cps[pos + 1]
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 { emit(pos + 2); continue }  // s t m d
                if pos + 2 < hi {
                    let n2 = cps[pos + 2]
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {  // re ve ll
                        emit(pos + 3); continue
                    }
                }
            }
            var f2 = cp == space ? f(pos + 1) : flags[pos]
            if f2.contains(.letter) {
                var p = pos + (cp == space ? 1 : 0)
                while f2.contains(.letter) { p += 1; f2 = f(p) }
                emit(p); continue
            }
            if f2.contains(.number) {
                var p = pos + (cp == space ? 1 : 0)
                while f2.contains(.number) { p += 1; f2 = f(p) }
                emit(p); continue
            }
            if f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f2.isEmpty {
                var p = pos + (cp == space ? 1 : 0)
                while f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f2.isEmpty { p += 1; f2 = f(p) }
                emit(p); continue
            }
            var nws = 0
            while f(pos + nws).contains(.whitespace) { nws += 1 }
            if nws > 1 && c(pos + nws) != 0xFFFF_FFFF { emit(pos + nws - 1); continue }  // \s+(?!\S)
            if nws > 0 { emit(pos + nws); continue }
            emit(pos + 1)
        }
    }

    private func splitLlama3(_ cps: [UInt32], _ flags: [CodepointFlags], _ lo: Int, _ hi: Int,
                             digitRun: Int, marks: Bool, _ out: inout [Int]) {
        @inline(__always) func f(_ i: Int) -> CodepointFlags { i < hi ? flags[i] : [] }
        @inline(__always) func c(_ i: Int) -> UInt32 { i < hi ? cps[i] : 0xFFFF_FFFF }
        @inline(__always) func lower(_ x: UInt32) -> UInt32 { (x >= 0x41 && x <= 0x5A) ? x + 32 : x }
        let word: CodepointFlags = marks ? [.letter, .mark] : .letter
        let notPunct: CodepointFlags = marks ? [.whitespace, .letter, .mark, .number] : [.whitespace, .letter, .number]
        let cr: UInt32 = 0x0D, lf: UInt32 = 0x0A, space: UInt32 = 0x20
        var prev = lo, pos = lo
        func emit(_ end: Int) { if end > prev { out.append(end - prev) }; prev = end; pos = end }
        while pos < hi {
            let cp = cps[pos], fl = flags[pos]
            if cp == 0x27 && pos + 1 < hi {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
                let n1 = lower(cps[pos + 1])
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 { emit(pos + 2); continue }
                if pos + 2 < hi {
                    let n2 = lower(cps[pos + 2])
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        emit(pos + 3); continue
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cp == cr || cp == lf || fl.contains(.number)) {
                if !fl.isDisjoint(with: word) || !f(pos + 1).isDisjoint(with: word) {
                    var p = pos + 1
                    while !f(p).isDisjoint(with: word) { p += 1 }
                    emit(p); continue
                }
            }
            // \p{N}{1,3} (or \p{N})
            if fl.contains(.number) {
                var p = pos, ini = pos
                while f(p).contains(.number) {
                    p += 1
                    if p - ini >= digitRun { emit(p); ini = p }
                }
                emit(p); continue
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'; llama.cpp tests the current code point's flags for "in range"
            var f2 = cp == space ? f(pos + 1) : fl
            if f2.isDisjoint(with: notPunct) && !fl.isEmpty {
                var p = pos + (cp == space ? 1 : 0)
                while f2.isDisjoint(with: notPunct) && !f2.isEmpty { p += 1; f2 = f(p) }
                while c(p) == cr || c(p) == lf { p += 1 }
                emit(p); continue
            }
            var nws = 0, lastNewlineEnd = 0
            while f(pos + nws).contains(.whitespace) {
                let x = cps[pos + nws]
                if x == cr || x == lf { lastNewlineEnd = pos + nws + 1 }
                nws += 1
            }
            if lastNewlineEnd > 0 { emit(lastNewlineEnd); continue }                        // \s*[\r\n]+
            if nws > 1 && c(pos + nws) != 0xFFFF_FFFF { emit(pos + nws - 1); continue }   // \s+(?!\S)
            if nws > 0 { emit(pos + nws); continue }                                        // \s+
            emit(pos + 1)
        }
    }

    // MARK: isolated patterns (std::regex semantics: leftmost match, first alternative)

    private func isolate(_ p: PreTokenizeStep.Pattern, _ cps: [UInt32], _ flags: [CodepointFlags],
                         _ lo: Int, _ hi: Int, _ out: inout [Int]) {
        var gapStart = lo, pos = lo
        while pos < hi {
            let n = matchLength(p, cps, flags, pos, hi)
            if n > 0 {
                if pos > gapStart { out.append(pos - gapStart) }
                out.append(n)
                pos += n
                gapStart = pos
            } else {
                pos += 1
            }
        }
        if hi > gapStart { out.append(hi - gapStart) }
    }

    private func matchLength(_ p: PreTokenizeStep.Pattern, _ cps: [UInt32], _ flags: [CodepointFlags],
                             _ pos: Int, _ hi: Int) -> Int {
        switch p {
        case .number:
            return flags[pos].contains(.number) ? 1 : 0
        case .numberRun:
            var e = pos
            while e < hi && flags[e].contains(.number) { e += 1 }
            return e - pos
        case .asciiDigits3:
            guard pos + 3 <= hi else { return 0 }
            for i in pos..<pos + 3 where !(cps[i] >= 0x30 && cps[i] <= 0x39) { return 0 }
            return 3
        case .punctuationRun(let extra):
            var e = pos
            while e < hi && (flags[e].contains(.punctuation) || extra.contains(cps[e])) { e += 1 }
            return e - pos
        case .newline:
            return cps[pos] == 0x0D || cps[pos] == 0x0A ? 1 : 0
        case .optionalSpaceThen(let cls):
            // \s? is greedy: take the space if a class member follows, else try without it
            if flags[pos].contains(.whitespace), pos + 1 < hi, inClass(cls, cps[pos + 1], flags[pos + 1]) {
                return 1 + runLength(cls, cps, flags, pos + 1, hi)
            }
            return runLength(cls, cps, flags, pos, hi)
        case .trailingWhitespace:
            var e = pos
            while e < hi && flags[e].contains(.whitespace) { e += 1 }
            return e == hi ? e - pos : 0
        case .run(let cls):
            return runLength(cls, cps, flags, pos, hi)
        }
    }

    private func runLength(_ cls: PreTokenizeStep.CharClass, _ cps: [UInt32], _ flags: [CodepointFlags],
                           _ pos: Int, _ hi: Int) -> Int {
        var e = pos
        while e < hi && inClass(cls, cps[e], flags[e]) { e += 1 }
        return e - pos
    }

    /// Class membership as llama.cpp's std::regex sees it: non-ASCII whitespace was
    /// replaced by U+000B before matching, so it is never a member of a listed range.
    @inline(__always)
    private func inClass(_ cls: PreTokenizeStep.CharClass, _ cp: UInt32, _ fl: CodepointFlags) -> Bool {
        switch cls {
        case .letters: return fl.contains(.letter)
        case .punctuation: return fl.contains(.punctuation)
        case .ranges(let rs):
            if cp >= 0x80 && fl.contains(.whitespace) { return false }
            for r in rs where r.contains(cp) { return true }
            return false
        }
    }
}

extension PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, or nil when Offload has none.
    /// `ignoreMerges`: a word that is itself a vocabulary token is emitted whole (llama3).
    /// `addBOS`: llama.cpp's default for `add_bos_token` when the metadata does not say.
    static func named(_ pre: String) -> (pre: PreTokenizer, ignoreMerges: Bool, addBOS: Bool)? {
        let numberThenGPT2: [PreTokenizeStep] = [.isolate(.number), .gpt2]
        let cjk: PreTokenizeStep.CharClass = .ranges([0x4E00...0x9FA5, 0x0800...0x4E00, 0xAC00...0xD7FF])
        switch pre {
        case "gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4", "a.x-4.0", "mellum", "gigachat":
            return (PreTokenizer(steps: [.gpt2]), false, false)
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2":
            return (PreTokenizer(steps: [.llama3(digitRun: 3, marks: false)]), true, true)
        case "dbrx", "smaug-bpe":
            return (PreTokenizer(steps: [.llama3(digitRun: 3, marks: false)]), false, false)
        case "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "kormo", "f2llmv2":
            return (PreTokenizer(steps: [.llama3(digitRun: 1, marks: false)]), false, false)
        case "qwen35":
            return (PreTokenizer(steps: [.llama3(digitRun: 1, marks: true)]), false, false)
        case "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2":
            return (PreTokenizer(steps: numberThenGPT2), false, false)
        case "falcon":
            return (PreTokenizer(steps: [.isolate(.punctuationRun(extra: Array("$+<=>^~|`".unicodeScalars.map(\.value)))),
                                          .gpt2, .isolate(.asciiDigits3)]), false, false)
        case "default":
            return (PreTokenizer(steps: [.isolate(.punctuationRun(extra: Array("$+<=>^~|".unicodeScalars.map(\.value)))),
                                          .gpt2, .isolate(.numberRun), .isolate(.asciiDigits3)]), false, false)
        case "deepseek-llm":
            return (PreTokenizer(steps: [
                .isolate(.newline),
                .isolate(.optionalSpaceThen(.ranges(deepseekLetters))),
                .isolate(.optionalSpaceThen(.ranges([0x21...0x2F, 0x3A...0x7E, 0xFF01...0xFF0F, 0xFF1A...0xFF5E,
                                                     0x2018...0x201F, 0x3000...0x3002]))),
                .isolate(.trailingWhitespace),
                .isolate(.run(cjk)),
                .isolate(.numberRun),
            ]), false, false)
        case "deepseek-coder":
            return (PreTokenizer(steps: [
                .isolate(.newline),
                .isolate(.optionalSpaceThen(.letters)),
                .isolate(.optionalSpaceThen(.punctuation)),
                .isolate(.run(cjk)),
                .isolate(.number),
            ]), false, false)
        default:
            return nil
        }
    }

    /// `tokenizer.ggml.pre` values `named` accepts, for error messages.
    static let supportedNames = ["gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4", "a.x-4.0", "mellum",
                                 "gigachat", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                 "midm-2.0", "lfm2", "dbrx", "smaug-bpe", "qwen2", "deepseek-r1-qwen", "stablelm2",
                                 "megrez", "kormo", "f2llmv2", "qwen35", "starcoder", "refact", "command-r", "smollm",
                                 "codeshell", "exaone", "minerva-7b", "mellum2", "falcon", "default", "deepseek-llm",
                                 "deepseek-coder"]

    /// DeepSeek LLM's letter class (`\s?[A-Za-zµÀ-Ö…]+` in its tokenizer.json), as code point ranges.
    static let deepseekLetters: [ClosedRange<UInt32>] = [
        0x41...0x5A, 0x61...0x7A, 0xB5...0xB5, 0xC0...0xD6, 0xD8...0xF6, 0xF8...0x1BA, 0x1BC...0x1BF,
        0x1C4...0x293, 0x295...0x2AF, 0x370...0x373, 0x376...0x377, 0x37B...0x37D, 0x37F...0x37F,
        0x386...0x386, 0x388...0x38A, 0x38C...0x38C, 0x38E...0x3A1, 0x3A3...0x3F5, 0x3F7...0x481,
        0x48A...0x52F, 0x531...0x556, 0x10A0...0x10C5, 0x13A0...0x13F5, 0x13F8...0x13FD, 0x1C90...0x1CBA,
        0x1CBD...0x1CBF, 0x1D00...0x1D2B, 0x1D6B...0x1D77, 0x1D79...0x1D9A, 0x1E00...0x1F15, 0x1F18...0x1F1D,
        0x1F20...0x1F45, 0x1F48...0x1F4D, 0x1F50...0x1F57, 0x1F59...0x1F59, 0x1F5B...0x1F5B, 0x1F5D...0x1F5D,
        0x1F5F...0x1F7D, 0x1F80...0x1FB4, 0x1FB6...0x1FBC, 0x1FBE...0x1FBE, 0x1FC2...0x1FC4, 0x1FC6...0x1FCC,
        0x1FD0...0x1FD3, 0x1FD6...0x1FDB, 0x1FE0...0x1FEC, 0x1FF2...0x1FF4, 0x1FF6...0x1FFC, 0x2102...0x2102,
        0x2107...0x2107, 0x210A...0x2113, 0x2115...0x2115, 0x2119...0x211D, 0x2124...0x2124, 0x2126...0x2126,
        0x2128...0x2128, 0x212A...0x212D, 0x212F...0x2134, 0x2139...0x2139, 0x213C...0x213F, 0x2145...0x2149,
        0x214E...0x214E, 0x2183...0x2184, 0x2C00...0x2C7B, 0x2C7E...0x2CE4, 0x2CEB...0x2CEE, 0x2CF2...0x2CF3,
        0xA640...0xA66D, 0xA680...0xA69B, 0xA722...0xA76F, 0xA771...0xA787, 0xA78B...0xA78E, 0xAB70...0xABBF,
        0xFB00...0xFB06, 0xFB13...0xFB17, 0xFF21...0xFF3A, 0xFF41...0xFF5A, 0x10400...0x1044F, 0x104B0...0x104D3,
        0x104D8...0x104FB, 0x10C80...0x10CB2, 0x10CC0...0x10CF2, 0x118A0...0x118DF, 0x1E900...0x1E943,
    ]
}

extension PreTokenizer {
    /// The Split patterns of Hugging Face tokenizer.json files that a step above implements, by the
    /// llama.cpp `pre` type whose rules they are (each written as in those files, after JSON unescaping).
    static let huggingFaceSplits: [(name: String, pattern: String, step: PreTokenizeStep)] = [
        ("gpt-2", #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#, .gpt2),
        ("llama3", #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
         .llama3(digitRun: 3, marks: false)),
        ("qwen2", #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
         .llama3(digitRun: 1, marks: false)),
        ("qwen35", #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
         .llama3(digitRun: 1, marks: true)),
        ("digits", #"\p{N}"#, .isolate(.number)),
        ("digit-runs", #"\p{N}+"#, .isolate(.numberRun)),
    ]

    /// The step for a Hugging Face `Split` pattern (behavior Isolated), or nil when Offload has none.
    /// A carriage return or line feed written as itself matches as `\r` / `\n` would.
    static func huggingFaceSplit(_ pattern: String) -> (name: String, step: PreTokenizeStep)? {
        let p = pattern.replacingOccurrences(of: "\r", with: #"\r"#).replacingOccurrences(of: "\n", with: #"\n"#)
        let bytes = Array(p.utf8)
        return huggingFaceSplits.first { Array($0.pattern.utf8) == bytes }.map { ($0.name, $0.step) }
    }
}
