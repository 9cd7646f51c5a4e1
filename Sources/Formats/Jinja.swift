// A Jinja lexer and parser for chat templates, built to give exactly what transformers gets from
// jinja2 (trim_blocks and lstrip_blocks on, newlines normalized, one trailing newline dropped, the
// loopcontrols extension and transformers' {% generation %} tag). The grammar, precedence and
// whitespace rules follow jinja2's lexer.py and parser.py; the result is a tree the interpreter
// (Jinja+Render.swift) walks. Not a general template engine: no inheritance, includes or imports.

import Foundation
import Tensors

// MARK: syntax tree

enum JinjaConstant: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
}

struct JinjaArguments: Sendable {
    var positional: [JinjaExpression] = []
    var keyword: [(name: String, value: JinjaExpression)] = []
}

struct JinjaFilterCall: Sendable {
    var name: String
    var arguments: JinjaArguments
    var line: Int
}

struct JinjaExpression: Sendable {
    indirect enum Kind: Sendable {
        case constant(JinjaConstant)
        case name(String)
        case list([JinjaExpression])
        case tuple([JinjaExpression])
        case dict([(key: JinjaExpression, value: JinjaExpression)])
        case attribute(JinjaExpression, String)
        case item(JinjaExpression, JinjaExpression)
        case slice(JinjaExpression, start: JinjaExpression?, stop: JinjaExpression?, step: JinjaExpression?)
        case call(JinjaExpression, JinjaArguments)
        case filter(JinjaExpression, JinjaFilterCall)
        case test(JinjaExpression, name: String, JinjaArguments)
        case not(JinjaExpression)
        case negate(JinjaExpression)
        case plus(JinjaExpression)
        case binary(JinjaBinaryOperator, JinjaExpression, JinjaExpression)
        case concat([JinjaExpression])
        case and(JinjaExpression, JinjaExpression)
        case or(JinjaExpression, JinjaExpression)
        case compare(JinjaExpression, [(op: String, operand: JinjaExpression)])
        case conditional(test: JinjaExpression, then: JinjaExpression, otherwise: JinjaExpression?)
    }
    var kind: Kind
    var line: Int
}

/// What `set` and `for` assign to.
indirect enum JinjaTarget: Sendable {
    case name(String)
    case namespaceAttribute(String, String)
    case tuple([JinjaTarget])
}

struct JinjaForLoop: Sendable {
    var target: JinjaTarget
    var iterable: JinjaExpression
    var condition: JinjaExpression?
    var body: [JinjaNode]
    var otherwise: [JinjaNode]
    var line: Int
}

struct JinjaMacroDefinition: Sendable {
    var name: String
    var parameters: [(name: String, defaultValue: JinjaExpression?)]
    var body: [JinjaNode]
    var line: Int
}

indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpression)
    case conditional([(test: JinjaExpression, body: [JinjaNode])], otherwise: [JinjaNode])
    case forLoop(JinjaForLoop)
    case set(JinjaTarget, JinjaExpression, line: Int)
    case setBlock(JinjaTarget, filters: [JinjaFilterCall], body: [JinjaNode], line: Int)
    case macro(JinjaMacroDefinition)
    case filterBlock([JinjaFilterCall], body: [JinjaNode])
    case breakLoop
    case continueLoop
}

/// jinja2's built-in filters and tests, plus transformers' `tojson`. A name outside these fails when
/// the template is parsed, as jinja2 fails when it compiles; one inside them that Offload does not
/// implement fails only when a render reaches it.
enum JinjaNames {
    static let filters: Set<String> = [
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
        "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join",
        "last", "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject", "rejectattr",
        "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags",
        "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount",
        "wordwrap", "xmlattr",
    ]
    static let tests: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter",
        "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt",
        "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined",
        "upper", "==", "!=", ">", ">=", "<", "<=",
    ]
}

// MARK: lexer

struct JinjaToken {
    enum Kind: Equatable {
        case data(String)
        case variableBegin, variableEnd, blockBegin, blockEnd
        case name(String)
        case string(String)
        case integer(Int)
        case float(Double)
        case op(String)
        case end
    }
    var kind: Kind
    var line: Int

    var describe: String {
        switch kind {
        case .data: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case .name(let n): return "'\(n)'"
        case .string: return "a string"
        case .integer(let i): return "'\(i)'"
        case .float(let d): return "'\(d)'"
        case .op(let o): return "'\(o)'"
        case .end: return "the end of the template"
        }
    }
}

/// Splits a template into jinja2's tokens, applying its whitespace rules as it goes.
struct JinjaLexer {
    private let s: [Unicode.Scalar]
    private var pos = 0
    private var lineStarts: [Int] = [0]
    private var tokens: [JinjaToken] = []
    let fail: (Int, String) -> OffloadError

    init(_ source: String, fail: @escaping (Int, String) -> OffloadError) {
        // jinja2: every \r\n, \r and \n becomes \n, and one trailing newline is dropped.
        var normalized: [Unicode.Scalar] = []
        normalized.reserveCapacity(source.unicodeScalars.count)
        var previousCR = false
        for c in source.unicodeScalars {
            if c == "\r" { normalized.append("\n"); previousCR = true; continue }
            if c == "\n" && previousCR { previousCR = false; continue }
            previousCR = false
            normalized.append(c)
        }
        if normalized.last == "\n" { normalized.removeLast() }
        s = normalized
        for (i, c) in s.enumerated() where c == "\n" { lineStarts.append(i + 1) }
        self.fail = fail
    }

    private func line(at p: Int) -> Int {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= p { lo = mid } else { hi = mid - 1 }
        }
        return lo + 1
    }

    private func at(_ p: Int, _ text: String) -> Bool {
        var i = p
        for c in text.unicodeScalars {
            guard i < s.count, s[i] == c else { return false }
            i += 1
        }
        return true
    }

    private func text(_ a: Int, _ b: Int) -> String { PyText.string(s[a..<b]) }

    private mutating func emit(_ kind: JinjaToken.Kind, at p: Int) { tokens.append(JinjaToken(kind: kind, line: line(at: p))) }

    /// Data before a tag, with `-` stripping or lstrip_blocks applied as jinja2's OptionalLStrip does.
    private mutating func emitData(_ a: Int, _ b: Int, sign: Unicode.Scalar?, isVariable: Bool, lineStarting: Bool) {
        var end = b
        if sign == "-" {
            while end > a && PyText.isSpace(s[end - 1]) { end -= 1 }
        } else if sign != "+" && !isVariable {
            var lineStart = end
            while lineStart > a && s[lineStart - 1] != "\n" { lineStart -= 1 }
            if lineStart > a || lineStarting {
                if lineStart < end && (lineStart..<end).allSatisfy({ PyText.isSpace(s[$0]) }) { end = lineStart }
            }
        }
        if end > a { emit(.data(text(a, end)), at: a) }
    }

    mutating func tokenize() throws -> [JinjaToken] {
        var lineStarting = true
        while pos < s.count {
            // The earliest {{, {% or {#.
            var p = pos
            while p + 1 < s.count && !(s[p] == "{" && (s[p + 1] == "{" || s[p + 1] == "%" || s[p + 1] == "#")) { p += 1 }
            if p + 1 >= s.count {
                emit(.data(text(pos, s.count)), at: pos)
                break
            }
            let opener = s[p + 1]
            let sign: Unicode.Scalar? = p + 2 < s.count && (s[p + 2] == "-" || s[p + 2] == "+") ? s[p + 2] : nil
            let afterOpener = p + 2 + (sign == nil ? 0 : 1)
            if opener == "%", let rawEnd = rawBegin(afterOpener) {
                emitData(pos, p, sign: sign, isVariable: false, lineStarting: lineStarting)
                try raw(from: rawEnd, openedAt: p)
                lineStarting = pos > 0 && s[pos - 1] == "\n"
                continue
            }
            emitData(pos, p, sign: sign, isVariable: opener == "{", lineStarting: lineStarting)
            pos = afterOpener
            switch opener {
            case "#":
                try comment(openedAt: p)
            case "{":
                emit(.variableBegin, at: p)
                try tag(block: false, openedAt: p)
            default:
                emit(.blockBegin, at: p)
                try tag(block: true, openedAt: p)
            }
            lineStarting = s[pos - 1] == "\n"
        }
        tokens.append(JinjaToken(kind: .end, line: line(at: s.count)))
        return tokens
    }

    /// After `{%` and its sign: `\s*raw\s*(-%}\s*|%})`; returns the position after it.
    private func rawBegin(_ start: Int) -> Int? {
        var p = start
        while p < s.count && PyText.isSpace(s[p]) { p += 1 }
        guard at(p, "raw") else { return nil }
        p += 3
        while p < s.count && PyText.isSpace(s[p]) { p += 1 }
        if at(p, "-%}") {
            p += 3
            while p < s.count && PyText.isSpace(s[p]) { p += 1 }
            return p
        }
        return at(p, "%}") ? p + 2 : nil
    }

    private mutating func raw(from start: Int, openedAt: Int) throws {
        var p = start
        while p + 1 < s.count {
            if s[p] == "{" && s[p + 1] == "%" {
                var q = p + 2
                let sign: Unicode.Scalar? = q < s.count && (s[q] == "-" || s[q] == "+") ? s[q] : nil
                if sign != nil { q += 1 }
                while q < s.count && PyText.isSpace(s[q]) { q += 1 }
                if at(q, "endraw") {
                    q += 6
                    while q < s.count && PyText.isSpace(s[q]) { q += 1 }
                    var end: Int?
                    if at(q, "+%}") { end = q + 3 } else if at(q, "-%}") {
                        var e = q + 3
                        while e < s.count && PyText.isSpace(s[e]) { e += 1 }
                        end = e
                    } else if at(q, "%}") { end = q + 2 + (at(q + 2, "\n") ? 1 : 0) }
                    if let end {
                        emitData(start, p, sign: sign, isVariable: false, lineStarting: false)
                        pos = end
                        return
                    }
                }
            }
            p += 1
        }
        throw fail(line(at: openedAt), "missing {% endraw %} for the {% raw %} opened here")
    }

    private mutating func comment(openedAt: Int) throws {
        var p = pos
        while p + 1 < s.count {
            if s[p] == "#" && s[p + 1] == "}" {
                let sign: Unicode.Scalar? = p > pos && (s[p - 1] == "-" || s[p - 1] == "+") ? s[p - 1] : nil
                p += 2
                if sign == "-" {
                    while p < s.count && PyText.isSpace(s[p]) { p += 1 }
                } else if sign == nil && p < s.count && s[p] == "\n" {
                    p += 1  // trim_blocks
                }
                pos = p
                return
            }
            p += 1
        }
        throw fail(line(at: openedAt), "missing end of comment tag ('#}') for the comment opened here")
    }

    private mutating func tag(block: Bool, openedAt: Int) throws {
        var brackets: [Unicode.Scalar] = []
        while true {
            guard pos < s.count else {
                throw fail(line(at: openedAt), "unexpected end of template: \(block ? "'%}'" : "'}}'") missing for the tag opened here")
            }
            if brackets.isEmpty {
                if block {
                    if at(pos, "+%}") { emit(.blockEnd, at: pos); pos += 3; return }
                    if at(pos, "-%}") {
                        emit(.blockEnd, at: pos)
                        pos += 3
                        while pos < s.count && PyText.isSpace(s[pos]) { pos += 1 }
                        return
                    }
                    if at(pos, "%}") {
                        emit(.blockEnd, at: pos)
                        pos += 2
                        if pos < s.count && s[pos] == "\n" { pos += 1 }  // trim_blocks
                        return
                    }
                } else {
                    if at(pos, "-}}") {
                        emit(.variableEnd, at: pos)
                        pos += 3
                        while pos < s.count && PyText.isSpace(s[pos]) { pos += 1 }
                        return
                    }
                    if at(pos, "}}") { emit(.variableEnd, at: pos); pos += 2; return }
                }
            }
            let c = s[pos]
            if PyText.isSpace(c) { pos += 1; continue }
            if c.properties.numericType != nil && c.isASCII { try number(); continue }
            if c == "_" || (c.isASCII && c.properties.isAlphabetic) {
                let start = pos
                while pos < s.count && (s[pos] == "_" || (s[pos].isASCII && (s[pos].properties.isAlphabetic || s[pos].properties.numericType != nil))) { pos += 1 }
                emit(.name(text(start, pos)), at: start)
                continue
            }
            if c == "'" || c == "\"" { try string(); continue }
            let start = pos
            let op: String
            if at(pos, "//") || at(pos, "**") || at(pos, "==") || at(pos, "!=") || at(pos, ">=") || at(pos, "<=") {
                op = text(pos, pos + 2)
            } else if "+-/*%~[](){}><=.:|,;".unicodeScalars.contains(c) {
                op = String(c)
            } else {
                throw fail(line(at: pos), "unexpected character \(String(reflecting: String(c))) in a tag")
            }
            pos += op.unicodeScalars.count
            switch op {
            case "(": brackets.append(")")
            case "[": brackets.append("]")
            case "{": brackets.append("}")
            case ")", "]", "}":
                guard let expected = brackets.popLast() else { throw fail(line(at: start), "unexpected '\(op)'") }
                guard String(expected) == op else { throw fail(line(at: start), "unexpected '\(op)', expected '\(expected)'") }
            default: break
            }
            emit(.op(op), at: start)
        }
    }

    private func isDigit(_ p: Int) -> Bool { p < s.count && s[p].value >= 0x30 && s[p].value <= 0x39 }

    /// jinja2's float_re and integer_re: digits with `_` separators, a fraction and/or an exponent
    /// make a float; 0b/0o/0x prefixes make integers.
    private mutating func number() throws {
        let start = pos
        if s[pos] == "0", pos + 1 < s.count, let radix = ["b": 2, "B": 2, "o": 8, "O": 8, "x": 16, "X": 16][Character(s[pos + 1])] {
            var p = pos + 2
            var digits = ""
            while p < s.count, s[p] == "_" || Int(String(s[p]), radix: radix) != nil {
                if s[p] != "_" { digits.unicodeScalars.append(s[p]) }
                p += 1
            }
            if let v = Int(digits, radix: radix) {
                pos = p
                emit(.integer(v), at: start)
                return
            }
        }
        func digitRun(_ p: inout Int) {
            while isDigit(p) || (p < s.count && s[p] == "_" && isDigit(p + 1) && p > 0 && isDigit(p - 1)) { p += 1 }
        }
        var p = pos
        digitRun(&p)
        var isFloat = false
        if p < s.count && s[p] == "." && isDigit(p + 1) {
            p += 1
            digitRun(&p)
            isFloat = true
        }
        if p < s.count && (s[p] == "e" || s[p] == "E") {
            var q = p + 1
            if q < s.count && (s[q] == "+" || s[q] == "-") { q += 1 }
            if isDigit(q) { digitRun(&q); p = q; isFloat = true }
        }
        let literal = text(start, p).replacingOccurrences(of: "_", with: "")
        pos = p
        if isFloat {
            guard let d = Double(literal) else { throw fail(line(at: start), "bad number \(literal)") }
            emit(.float(d), at: start)
        } else {
            guard let i = Int(literal) else { throw fail(line(at: start), "integer \(literal) does not fit in 64 bits") }
            emit(.integer(i), at: start)
        }
    }

    /// A quoted string, unescaped as jinja2 does it (Python's unicode-escape codec).
    private mutating func string() throws {
        let start = pos
        let quote = s[pos]
        var out = String.UnicodeScalarView()
        var p = pos + 1
        while true {
            guard p < s.count else { throw fail(line(at: start), "unterminated string") }
            let c = s[p]
            if c == quote { p += 1; break }
            if c != "\\" { out.append(c); p += 1; continue }
            guard p + 1 < s.count else { throw fail(line(at: start), "unterminated string") }
            let e = s[p + 1]
            p += 2
            func hexDigits(_ n: Int) throws -> Unicode.Scalar {
                guard p + n <= s.count, let v = UInt32(text(p, p + n), radix: 16), let u = Unicode.Scalar(v) else {
                    throw fail(line(at: start), "truncated \\\(e) escape in a string")
                }
                p += n
                return u
            }
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "x": out.append(try hexDigits(2))
            case "u": out.append(try hexDigits(4))
            case "U": out.append(try hexDigits(8))
            case "0"..."7":
                var v = e.value - 0x30
                var n = 1
                while n < 3 && p < s.count && s[p].value >= 0x30 && s[p].value <= 0x37 {
                    v = v * 8 + s[p].value - 0x30
                    p += 1
                    n += 1
                }
                out.append(Unicode.Scalar(v)!)
            case "N": throw fail(line(at: start), "\\N{...} escapes are not supported")
            default: out.append("\\"); out.append(e)  // Python keeps unknown escapes as they are
            }
        }
        pos = p
        emit(.string(String(out)), at: start)
    }
}

// MARK: parser

/// Recursive descent over the tokens, following jinja2's parser.py function for function.
struct JinjaParser {
    private var tokens: [JinjaToken]
    private var i = 0
    private var loopDepth = 0
    let fail: (Int, String) -> OffloadError

    init(tokens: [JinjaToken], fail: @escaping (Int, String) -> OffloadError) {
        self.tokens = tokens
        self.fail = fail
    }

    private var current: JinjaToken { tokens[i] }
    private var next: JinjaToken { tokens[min(i + 1, tokens.count - 1)] }
    private mutating func advance() { if i < tokens.count - 1 { i += 1 } }

    private func isName(_ t: JinjaToken, _ n: String) -> Bool { if case .name(n) = t.kind { return true }; return false }
    private func isOp(_ t: JinjaToken, _ o: String) -> Bool { if case .op(o) = t.kind { return true }; return false }

    private mutating func expectOp(_ o: String) throws {
        guard isOp(current, o) else { throw fail(current.line, "expected '\(o)', found \(current.describe)") }
        advance()
    }
    private mutating func expectName() throws -> String {
        guard case .name(let n) = current.kind else { throw fail(current.line, "expected a name, found \(current.describe)") }
        advance()
        return n
    }
    private mutating func expectBlockEnd(_ tag: String) throws {
        guard case .blockEnd = current.kind else {
            throw fail(current.line, "expected the end of the '\(tag)' tag ('%}'), found \(current.describe)")
        }
        advance()
    }

    mutating func parseTemplate() throws -> [JinjaNode] {
        let (body, _) = try parseBody(until: [], opener: nil)
        try checkNames(body, soft: false)
        return body
    }

    /// jinja2 refuses a filter or test it does not know when it compiles the template, except inside
    /// an `if` (its test and branches) or an inline if-expression, where the name is looked up only
    /// when reached; a for loop, macro, set block or filter block inside starts strict again.
    private func checkNames(_ nodes: [JinjaNode], soft: Bool) throws {
        for node in nodes {
            switch node {
            case .text, .breakLoop, .continueLoop: break
            case .output(let e): try checkNames(e, soft: soft)
            case .conditional(let branches, let otherwise):
                for (test, body) in branches {
                    try checkNames(test, soft: true)
                    try checkNames(body, soft: true)
                }
                try checkNames(otherwise, soft: true)
            case .forLoop(let loop):
                try checkNames(loop.iterable, soft: soft)
                if let c = loop.condition { try checkNames(c, soft: false) }
                try checkNames(loop.body, soft: false)
                try checkNames(loop.otherwise, soft: false)
            case .set(_, let e, _): try checkNames(e, soft: soft)
            case .setBlock(_, let filters, let body, _), .filterBlock(let filters, let body):
                for f in filters { try checkFilter(f, soft: false) }
                try checkNames(body, soft: false)
            case .macro(let m):
                for p in m.parameters { if let d = p.defaultValue { try checkNames(d, soft: false) } }
                try checkNames(m.body, soft: false)
            }
        }
    }

    private func checkFilter(_ f: JinjaFilterCall, soft: Bool) throws {
        if !soft && !JinjaNames.filters.contains(f.name) { throw fail(f.line, "no filter named '\(f.name)'") }
        try checkNames(f.arguments, soft: soft)
    }

    private func checkNames(_ a: JinjaArguments, soft: Bool) throws {
        for e in a.positional { try checkNames(e, soft: soft) }
        for k in a.keyword { try checkNames(k.value, soft: soft) }
    }

    private func checkNames(_ e: JinjaExpression, soft: Bool) throws {
        switch e.kind {
        case .constant, .name: break
        case .list(let items), .tuple(let items), .concat(let items): for i in items { try checkNames(i, soft: soft) }
        case .dict(let pairs): for p in pairs { try checkNames(p.key, soft: soft); try checkNames(p.value, soft: soft) }
        case .attribute(let x, _), .not(let x), .negate(let x), .plus(let x): try checkNames(x, soft: soft)
        case .item(let x, let y), .binary(_, let x, let y), .and(let x, let y), .or(let x, let y):
            try checkNames(x, soft: soft)
            try checkNames(y, soft: soft)
        case .slice(let x, let a, let b, let c):
            for part in [x, a, b, c].compactMap({ $0 }) { try checkNames(part, soft: soft) }
        case .call(let x, let args):
            try checkNames(x, soft: soft)
            try checkNames(args, soft: soft)
        case .filter(let x, let f):
            try checkNames(x, soft: soft)
            try checkFilter(f, soft: soft)
        case .test(let x, let name, let args):
            if !soft && !JinjaNames.tests.contains(name) { throw fail(e.line, "no test named '\(name)'") }
            try checkNames(x, soft: soft)
            try checkNames(args, soft: soft)
        case .compare(let x, let ops):
            try checkNames(x, soft: soft)
            for o in ops { try checkNames(o.operand, soft: soft) }
        case .conditional(let test, let then, let otherwise):
            for part in [test, then, otherwise].compactMap({ $0 }) { try checkNames(part, soft: true) }
        }
    }

    /// Nodes up to a block tag whose name is in `ends` (consumed, with its name returned) or, at the top level, the end.
    private mutating func parseBody(until ends: Set<String>, opener: (tag: String, line: Int)?) throws -> ([JinjaNode], String) {
        var nodes: [JinjaNode] = []
        while true {
            let t = current
            switch t.kind {
            case .end:
                if let opener {
                    let wanted = ends.sorted().map { "'\($0)'" }.joined(separator: " or ")
                    throw fail(t.line, "unexpected end of template: the '\(opener.tag)' block opened at line \(opener.line) is never closed (expected \(wanted))")
                }
                return (nodes, "")
            case .data(let text):
                nodes.append(.text(text))
                advance()
            case .variableBegin:
                advance()
                let e = try parseTuple(withConditional: true)
                guard case .variableEnd = current.kind else { throw fail(current.line, "expected '}}', found \(current.describe)") }
                advance()
                nodes.append(.output(e))
            case .blockBegin:
                if case .name(let n) = next.kind, ends.contains(n) {
                    advance()
                    advance()
                    return (nodes, n)
                }
                advance()
                nodes.append(contentsOf: try parseStatement(expecting: ends, opener: opener))
            default:
                throw fail(t.line, "unexpected \(t.describe)")
            }
        }
    }

    private mutating func parseStatement(expecting ends: Set<String>, opener: (tag: String, line: Int)?) throws -> [JinjaNode] {
        let t = current
        guard case .name(let tag) = t.kind else { throw fail(t.line, "expected a tag name after '{%', found \(t.describe)") }
        advance()
        switch tag {
        case "if": return [try parseIf(line: t.line)]
        case "for": return [try parseFor(line: t.line)]
        case "set": return [try parseSet(line: t.line)]
        case "macro": return [try parseMacro(line: t.line)]
        case "break", "continue":
            guard loopDepth > 0 else { throw fail(t.line, "'\(tag)' outside of a loop") }
            try expectBlockEnd(tag)
            return [tag == "break" ? .breakLoop : .continueLoop]
        case "generation":
            // transformers' tag marking the assistant's tokens: renders its body unchanged.
            try expectBlockEnd(tag)
            let body = try parseBody(until: ["endgeneration"], opener: (tag, t.line)).0
            try expectBlockEnd("endgeneration")
            return body
        case "filter":
            let filters = try parseFilterChain()
            try expectBlockEnd(tag)
            let body = try parseBody(until: ["endfilter"], opener: (tag, t.line)).0
            try expectBlockEnd("endfilter")
            return [.filterBlock(filters, body: body)]
        case "call", "include", "extends", "block", "import", "from", "with", "autoescape", "do":
            throw fail(t.line, "the '\(tag)' tag is not supported in chat templates")
        default:
            var message = "unknown tag '\(tag)'"
            if let opener {
                let wanted = ends.sorted().map { "'\($0)'" }.joined(separator: " or ")
                message += " (inside the '\(opener.tag)' block opened at line \(opener.line), expecting \(wanted))"
            }
            throw fail(t.line, message)
        }
    }

    private mutating func parseIf(line: Int) throws -> JinjaNode {
        var branches: [(test: JinjaExpression, body: [JinjaNode])] = []
        var otherwise: [JinjaNode] = []
        var test = try parseTuple(withConditional: false)
        var tag = "if"
        while true {
            try expectBlockEnd(tag)
            let (body, end) = try parseBody(until: ["elif", "else", "endif"], opener: ("if", line))
            branches.append((test, body))
            if end == "elif" {
                test = try parseTuple(withConditional: false)
                tag = "elif"
                continue
            }
            if end == "else" {
                try expectBlockEnd("else")
                otherwise = try parseBody(until: ["endif"], opener: ("if", line)).0
            }
            try expectBlockEnd("endif")
            return .conditional(branches, otherwise: otherwise)
        }
    }

    private mutating func parseFor(line: Int) throws -> JinjaNode {
        let target = try parseAssignTarget(withNamespace: false, extraEnds: ["in"])
        guard isName(current, "in") else { throw fail(current.line, "expected 'in' in the for loop, found \(current.describe)") }
        advance()
        let iterable = try parseTuple(withConditional: false, extraEnds: ["recursive"])
        var condition: JinjaExpression?
        if isName(current, "if") {
            advance()
            condition = try parseExpression(withConditional: true)
        }
        if isName(current, "recursive") { throw fail(current.line, "recursive for loops are not supported") }
        try expectBlockEnd("for")
        loopDepth += 1
        let (body, end) = try parseBody(until: ["endfor", "else"], opener: ("for", line))
        loopDepth -= 1
        var otherwise: [JinjaNode] = []
        if end == "else" {
            try expectBlockEnd("else")
            otherwise = try parseBody(until: ["endfor"], opener: ("for", line)).0
        }
        try expectBlockEnd("endfor")
        return .forLoop(JinjaForLoop(target: target, iterable: iterable, condition: condition, body: body,
                                     otherwise: otherwise, line: line))
    }

    private mutating func parseSet(line: Int) throws -> JinjaNode {
        let target = try parseAssignTarget(withNamespace: true, extraEnds: [])
        if isOp(current, "=") {
            advance()
            let value = try parseTuple(withConditional: true)
            try expectBlockEnd("set")
            return .set(target, value, line: line)
        }
        let filters = try parseFilterChain()
        try expectBlockEnd("set")
        let body = try parseBody(until: ["endset"], opener: ("set", line)).0
        try expectBlockEnd("endset")
        return .setBlock(target, filters: filters, body: body, line: line)
    }

    private mutating func parseMacro(line: Int) throws -> JinjaNode {
        let name = try expectName()
        try expectOp("(")
        var parameters: [(name: String, defaultValue: JinjaExpression?)] = []
        while !isOp(current, ")") {
            if !parameters.isEmpty { try expectOp(",") }
            let p = try expectName()
            var defaultValue: JinjaExpression?
            if isOp(current, "=") {
                advance()
                defaultValue = try parseExpression(withConditional: true)
            } else if parameters.contains(where: { $0.defaultValue != nil }) {
                throw fail(current.line, "macro \(name): parameter \(p) without a default follows one with a default")
            }
            parameters.append((p, defaultValue))
        }
        advance()
        try expectBlockEnd("macro")
        let savedDepth = loopDepth
        loopDepth = 0
        let body = try parseBody(until: ["endmacro"], opener: ("macro", line)).0
        loopDepth = savedDepth
        try expectBlockEnd("endmacro")
        return .macro(JinjaMacroDefinition(name: name, parameters: parameters, body: body, line: line))
    }

    /// `| name(args) | name …` after a `{% set x %}` or `{% filter %}` (the first pipe optional for filter).
    private mutating func parseFilterChain() throws -> [JinjaFilterCall] {
        var filters: [JinjaFilterCall] = []
        var first = true
        while isOp(current, "|") || (first && { if case .name = current.kind { return true }; return false }()) {
            if isOp(current, "|") { advance() }
            first = false
            filters.append(try parseFilterCall())
        }
        return filters
    }

    private mutating func parseAssignTarget(withNamespace: Bool, extraEnds: Set<String>) throws -> JinjaTarget {
        let line = current.line
        if withNamespace, case .name(let n) = current.kind, isOp(next, ".") {
            advance()
            advance()
            let attribute = try expectName()
            return .namespaceAttribute(n, attribute)
        }
        let e = try parseTuple(simplified: true, withConditional: true, extraEnds: extraEnds)
        func target(_ e: JinjaExpression) throws -> JinjaTarget {
            switch e.kind {
            case .name(let n):
                return .name(n)
            case .tuple(let items): return .tuple(try items.map(target))
            default: throw fail(line, "cannot assign to this expression")
            }
        }
        return try target(e)
    }

    // MARK: expressions

    private func isTupleEnd(_ extraEnds: Set<String>) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd: return true
        case .op(")"): return true
        case .name(let n): return extraEnds.contains(n)
        default: return false
        }
    }

    private mutating func parseTuple(simplified: Bool = false, withConditional: Bool, extraEnds: Set<String> = [],
                                     explicitParentheses: Bool = false) throws -> JinjaExpression {
        let line = current.line
        var items: [JinjaExpression] = []
        var isTuple = false
        while true {
            if !items.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnds) { break }
            items.append(simplified ? try parsePrimary() : try parseExpression(withConditional: withConditional))
            if isOp(current, ",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let only = items.first { return only }
            if !explicitParentheses { throw fail(current.line, "expected an expression, found \(current.describe)") }
        }
        return JinjaExpression(kind: .tuple(items), line: line)
    }

    private mutating func parseExpression(withConditional: Bool) throws -> JinjaExpression {
        withConditional ? try parseConditional() : try parseOr()
    }

    private mutating func parseConditional() throws -> JinjaExpression {
        var line = current.line
        var e = try parseOr()
        while isName(current, "if") {
            advance()
            let test = try parseOr()
            var otherwise: JinjaExpression?
            if isName(current, "else") {
                advance()
                otherwise = try parseConditional()
            }
            e = JinjaExpression(kind: .conditional(test: test, then: e, otherwise: otherwise), line: line)
            line = current.line
        }
        return e
    }

    private mutating func parseOr() throws -> JinjaExpression {
        var e = try parseAnd()
        while isName(current, "or") {
            let line = current.line
            advance()
            e = JinjaExpression(kind: .or(e, try parseAnd()), line: line)
        }
        return e
    }

    private mutating func parseAnd() throws -> JinjaExpression {
        var e = try parseNot()
        while isName(current, "and") {
            let line = current.line
            advance()
            e = JinjaExpression(kind: .and(e, try parseNot()), line: line)
        }
        return e
    }

    private mutating func parseNot() throws -> JinjaExpression {
        if isName(current, "not") {
            let line = current.line
            advance()
            return JinjaExpression(kind: .not(try parseNot()), line: line)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> JinjaExpression {
        let line = current.line
        let e = try parseMath1()
        var ops: [(op: String, operand: JinjaExpression)] = []
        while true {
            if case .op(let o) = current.kind, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                advance()
                ops.append((o, try parseMath1()))
            } else if isName(current, "in") {
                advance()
                ops.append(("in", try parseMath1()))
            } else if isName(current, "not") && isName(next, "in") {
                advance()
                advance()
                ops.append(("not in", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? e : JinjaExpression(kind: .compare(e, ops), line: line)
    }

    private mutating func parseMath1() throws -> JinjaExpression {
        var e = try parseConcat()
        while case .op(let o) = current.kind, o == "+" || o == "-" {
            let line = current.line
            advance()
            e = JinjaExpression(kind: .binary(o == "+" ? .add : .subtract, e, try parseConcat()), line: line)
        }
        return e
    }

    private mutating func parseConcat() throws -> JinjaExpression {
        let line = current.line
        var items = [try parseMath2()]
        while isOp(current, "~") {
            advance()
            items.append(try parseMath2())
        }
        return items.count == 1 ? items[0] : JinjaExpression(kind: .concat(items), line: line)
    }

    private mutating func parseMath2() throws -> JinjaExpression {
        var e = try parsePow()
        while case .op(let o) = current.kind, let op = ["*": JinjaBinaryOperator.multiply, "/": .divide, "//": .floorDivide, "%": .modulo][o] {
            let line = current.line
            advance()
            e = JinjaExpression(kind: .binary(op, e, try parsePow()), line: line)
        }
        return e
    }

    private mutating func parsePow() throws -> JinjaExpression {
        var e = try parseUnary(withFilter: true)
        while isOp(current, "**") {
            let line = current.line
            advance()
            e = JinjaExpression(kind: .binary(.power, e, try parseUnary(withFilter: true)), line: line)
        }
        return e
    }

    private mutating func parseUnary(withFilter: Bool) throws -> JinjaExpression {
        let line = current.line
        var e: JinjaExpression
        if isOp(current, "-") {
            advance()
            e = JinjaExpression(kind: .negate(try parseUnary(withFilter: false)), line: line)
        } else if isOp(current, "+") {
            advance()
            e = JinjaExpression(kind: .plus(try parseUnary(withFilter: false)), line: line)
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpression(e) }
        return e
    }

    private mutating func parsePrimary() throws -> JinjaExpression {
        let t = current
        switch t.kind {
        case .name(let n):
            advance()
            switch n {
            case "true", "True": return JinjaExpression(kind: .constant(.bool(true)), line: t.line)
            case "false", "False": return JinjaExpression(kind: .constant(.bool(false)), line: t.line)
            case "none", "None": return JinjaExpression(kind: .constant(.none), line: t.line)
            default: return JinjaExpression(kind: .name(n), line: t.line)
            }
        case .string(let first):
            advance()
            var text = first
            while case .string(let more) = current.kind { text += more; advance() }  // adjacent literals join
            return JinjaExpression(kind: .constant(.string(text)), line: t.line)
        case .integer(let v):
            advance()
            return JinjaExpression(kind: .constant(.int(v)), line: t.line)
        case .float(let v):
            advance()
            return JinjaExpression(kind: .constant(.double(v)), line: t.line)
        case .op("("):
            advance()
            let e = try parseTuple(withConditional: true, explicitParentheses: true)
            try expectOp(")")
            return e
        case .op("["):
            advance()
            var items: [JinjaExpression] = []
            while !isOp(current, "]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp(current, "]") { break }
                items.append(try parseExpression(withConditional: true))
            }
            try expectOp("]")
            return JinjaExpression(kind: .list(items), line: t.line)
        case .op("{"):
            advance()
            var items: [(key: JinjaExpression, value: JinjaExpression)] = []
            while !isOp(current, "}") {
                if !items.isEmpty { try expectOp(",") }
                if isOp(current, "}") { break }
                let key = try parseExpression(withConditional: true)
                try expectOp(":")
                items.append((key, try parseExpression(withConditional: true)))
            }
            try expectOp("}")
            return JinjaExpression(kind: .dict(items), line: t.line)
        default:
            throw fail(t.line, "unexpected \(t.describe) in an expression")
        }
    }

    private mutating func parsePostfix(_ start: JinjaExpression) throws -> JinjaExpression {
        var e = start
        while true {
            let line = current.line
            if isOp(current, ".") {
                advance()
                switch current.kind {
                case .name(let n):
                    advance()
                    e = JinjaExpression(kind: .attribute(e, n), line: line)
                case .integer(let v):
                    advance()
                    e = JinjaExpression(kind: .item(e, JinjaExpression(kind: .constant(.int(v)), line: line)), line: line)
                default:
                    throw fail(line, "expected an attribute name after '.', found \(current.describe)")
                }
            } else if isOp(current, "[") {
                advance()
                var subscripts: [JinjaExpression] = []
                while !isOp(current, "]") {
                    if !subscripts.isEmpty { try expectOp(",") }
                    subscripts.append(try parseSubscript())
                }
                advance()
                guard !subscripts.isEmpty else { throw fail(line, "expected a subscript inside '[]'") }
                let index = subscripts.count == 1 ? subscripts[0] : JinjaExpression(kind: .tuple(subscripts), line: line)
                if case .slice(_, let a, let b, let c) = index.kind {
                    e = JinjaExpression(kind: .slice(e, start: a, stop: b, step: c), line: line)
                } else {
                    e = JinjaExpression(kind: .item(e, index), line: line)
                }
            } else if isOp(current, "(") {
                e = JinjaExpression(kind: .call(e, try parseCallArguments()), line: line)
            } else {
                return e
            }
        }
    }

    /// One subscript: an expression, or a slice `a:b:c` (returned as a slice of a placeholder).
    private mutating func parseSubscript() throws -> JinjaExpression {
        let line = current.line
        var parts: [JinjaExpression?] = []
        if isOp(current, ":") {
            advance()
            parts = [nil]
        } else {
            let e = try parseExpression(withConditional: true)
            if !isOp(current, ":") { return e }
            advance()
            parts = [e]
        }
        func endsPart() -> Bool { isOp(current, "]") || isOp(current, ",") }
        if isOp(current, ":") { parts.append(nil) } else if !endsPart() { parts.append(try parseExpression(withConditional: true)) } else { parts.append(nil) }
        if isOp(current, ":") {
            advance()
            parts.append(endsPart() ? nil : try parseExpression(withConditional: true))
        } else {
            parts.append(nil)
        }
        let placeholder = JinjaExpression(kind: .constant(.none), line: line)
        return JinjaExpression(kind: .slice(placeholder, start: parts[0], stop: parts[1], step: parts[2]), line: line)
    }

    private mutating func parseCallArguments() throws -> JinjaArguments {
        let line = current.line
        try expectOp("(")
        var args = JinjaArguments()
        var needComma = false
        while !isOp(current, ")") {
            if needComma {
                try expectOp(",")
                if isOp(current, ")") { break }
            }
            if isOp(current, "*") || isOp(current, "**") {
                throw fail(current.line, "*args and **kwargs in calls are not supported")
            }
            if case .name(let key) = current.kind, isOp(next, "=") {
                advance()
                advance()
                args.keyword.append((key, try parseExpression(withConditional: true)))
            } else {
                guard args.keyword.isEmpty else { throw fail(line, "invalid syntax for function call expression (positional argument after a keyword argument)") }
                args.positional.append(try parseExpression(withConditional: true))
            }
            needComma = true
        }
        advance()
        return args
    }

    private mutating func parseFilterCall() throws -> JinjaFilterCall {
        let line = current.line
        var name = try expectName()
        while isOp(current, ".") {
            advance()
            name += "." + (try expectName())
        }
        let args = isOp(current, "(") ? try parseCallArguments() : JinjaArguments()
        return JinjaFilterCall(name: name, arguments: args, line: line)
    }

    private mutating func parseFilterExpression(_ start: JinjaExpression) throws -> JinjaExpression {
        var e = start
        while true {
            if isOp(current, "|") {
                while isOp(current, "|") {
                    advance()
                    let f = try parseFilterCall()
                    e = JinjaExpression(kind: .filter(e, f), line: f.line)
                }
            } else if isName(current, "is") {
                e = try parseTest(e)
            } else if isOp(current, "(") {
                e = JinjaExpression(kind: .call(e, try parseCallArguments()), line: current.line)
            } else {
                return e
            }
        }
    }

    private mutating func parseTest(_ subject: JinjaExpression) throws -> JinjaExpression {
        let line = current.line
        advance()  // "is"
        var negated = false
        if isName(current, "not") {
            advance()
            negated = true
        }
        var name = try expectName()
        while isOp(current, ".") {
            advance()
            name += "." + (try expectName())
        }
        var args = JinjaArguments()
        if isOp(current, "(") {
            args = try parseCallArguments()
        } else {
            let startsArgument: Bool
            switch current.kind {
            case .name(let n): startsArgument = !["else", "or", "and"].contains(n)
            case .string, .integer, .float, .op("("), .op("["), .op("{"): startsArgument = true
            default: startsArgument = false
            }
            if startsArgument {
                if isName(current, "is") { throw fail(current.line, "you cannot chain multiple tests with is") }
                args.positional = [try parsePostfix(try parsePrimary())]
            }
        }
        let test = JinjaExpression(kind: .test(subject, name: name, args), line: line)
        return negated ? JinjaExpression(kind: .not(test), line: line) : test
    }
}
