// The values a chat template computes with, and the Python semantics jinja2 gives them: str(),
// repr(), truthiness, ==, <, arithmetic, len, iteration, indexing and slicing, all on Unicode code
// points as Python counts them (never Swift's grapheme clusters or canonical equivalence).
// Not a Python: only what templates reach through jinja2.

import Foundation
import Tensors

/// A value inside a template. Lists, tuples and dicts are values; a namespace is shared (jinja2's
/// `namespace()` is an object that `{% set ns.x = … %}` changes where every scope sees it).
enum JinjaValue {
    /// jinja2's default `Undefined`: renders as "", is falsy, iterates as empty; most other uses fail.
    /// The payload names what was missing, for that failure's message.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    /// markupsafe's Markup (from `safe` and `escape`): a str, except that `+` escapes a plain str
    /// joined to it. Everywhere else it acts as the plain string (`plain`).
    case markup(String)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    /// What jinja2's filters and dict methods return that is not a list: generators (map, select…),
    /// dict views, range.
    case iterator(JinjaIterator)
    case namespace(JinjaNamespace)
    case loop(JinjaLoop)
    case function(JinjaFunction)
}

/// A Python iterable that is not a list. A generator or reverse iterator is always true, has no
/// len(), cannot be indexed, and is used up by the first pass over it; a dict view or range has a
/// length, is true when not empty, and can be iterated again.
final class JinjaIterator {
    enum Kind: Equatable {
        case generator, reverseIterator, dictKeys, dictValues, dictItems
        case range(start: Int, stop: Int, step: Int)
    }
    let kind: Kind
    let items: [JinjaValue]
    private(set) var position = 0

    init(_ kind: Kind, _ items: [JinjaValue]) { self.kind = kind; self.items = items }

    /// A generator or reverse iterator: consumed as it is read.
    var isOneShot: Bool { kind == .generator || kind == .reverseIterator }

    /// What the next pass sees; a one-shot iterator is then used up.
    func drain() -> [JinjaValue] {
        guard isOneShot else { return items }
        let rest = Array(items[position...])
        position = items.count
        return rest
    }

    /// Python's next(): the next item, nil when exhausted (a view restarts each time).
    func next() -> JinjaValue? {
        guard isOneShot else { return items.first }
        guard position < items.count else { return nil }
        position += 1
        return items[position - 1]
    }

    var typeName: String {
        switch kind {
        case .generator: return "generator"
        case .reverseIterator: return "list_reverseiterator"
        case .dictKeys: return "dict_keys"
        case .dictValues: return "dict_values"
        case .dictItems: return "dict_items"
        case .range: return "range"
        }
    }
}

/// A Python dict: insertion order, keys compared with Python's `==` (so 1, 1.0 and True are one key).
struct JinjaDict {
    private(set) var keys: [JinjaValue] = []
    private(set) var values: [JinjaValue] = []

    init() {}
    init(_ pairs: [(String, JinjaValue)]) {
        keys.reserveCapacity(pairs.count)
        values.reserveCapacity(pairs.count)
        for (k, v) in pairs { self[.string(k)] = v }
    }

    var count: Int { keys.count }

    func index(of key: JinjaValue) -> Int? {
        let key = key.plain  // Markup is a str: the same key
        if case .string(let s) = key {
            // The common case, compared byte for byte (Python compares code points).
            for (i, k) in keys.enumerated() { if case .string(let t) = k, t.utf8.elementsEqual(s.utf8) { return i } }
            return nil
        }
        return keys.firstIndex { $0.pyEquals(key) }
    }

    subscript(key: JinjaValue) -> JinjaValue? {
        get { index(of: key).map { values[$0] } }
        set {
            if let i = index(of: key) {
                if let newValue { values[i] = newValue } else { keys.remove(at: i); values.remove(at: i) }
            } else if let newValue {
                keys.append(key.plain)
                values.append(newValue)
            }
        }
    }

    subscript(key: String) -> JinjaValue? { self[.string(key)] }

    var items: [(key: JinjaValue, value: JinjaValue)] { Array(zip(keys, values)).map { (key: $0.0, value: $0.1) } }
}

/// jinja2's `namespace(...)`: attributes in insertion order, shared by reference.
final class JinjaNamespace {
    var attributes: JinjaDict
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// The `loop` variable of a for loop.
final class JinjaLoop {
    let items: [JinjaValue]
    var index0 = 0
    let depth0: Int
    init(items: [JinjaValue], depth0: Int) { self.items = items; self.depth0 = depth0 }

    func attribute(_ name: String) -> JinjaValue? {
        let n = items.count
        switch name {
        case "index": return .int(index0 + 1)
        case "index0": return .int(index0)
        case "revindex": return .int(n - index0)
        case "revindex0": return .int(n - index0 - 1)
        case "first": return .bool(index0 == 0)
        case "last": return .bool(index0 == n - 1)
        case "length": return .int(n)
        case "depth": return .int(depth0 + 1)
        case "depth0": return .int(depth0)
        case "previtem": return index0 > 0 ? items[index0 - 1] : .undefined("there is no previous item")
        case "nextitem": return index0 + 1 < n ? items[index0 + 1] : .undefined("there is no next item")
        case "cycle": return .function(.method(.loop(self), "cycle"))
        default: return nil
        }
    }
}

/// Something a template can call.
indirect enum JinjaFunction {
    /// A global: range, namespace, dict, raise_exception, strftime_now.
    case global(String)
    /// A method bound to its receiver (`message.content.strip`, `loop.cycle`).
    case method(JinjaValue, String)
    case macro(JinjaMacro)
}

/// A `{% macro %}` with the scope it was defined in (its free names resolve there when called).
final class JinjaMacro {
    let definition: JinjaMacroDefinition
    let scope: JinjaScope
    init(_ definition: JinjaMacroDefinition, scope: JinjaScope) { self.definition = definition; self.scope = scope }
}

/// Python's kind of failure, for messages that say what went wrong.
struct JinjaTypeError: Error { let message: String; init(_ m: String) { message = m } }

extension JinjaValue {
    /// Python's type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string, .markup: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .iterator(let it): return it.typeName
        case .namespace: return "Namespace"
        case .loop: return "LoopContext"
        case .function(.macro): return "Macro"
        case .function: return "builtin_function_or_method"
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }
    var isNone: Bool { if case .none = self { return true }; return false }
    /// The text of a str (Markup included).
    var stringValue: String? {
        switch self {
        case .string(let s), .markup(let s): return s
        default: return nil
        }
    }
    /// Markup as the plain str it also is; every other value unchanged.
    var plain: JinjaValue { if case .markup(let s) = self { return .string(s) }; return self }

    /// Python's truth value; Undefined is false.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s), .markup(let s): return !s.isEmpty
        case .list(let a), .tuple(let a): return !a.isEmpty
        case .dict(let d): return d.count > 0
        case .iterator(let it): return it.isOneShot || !it.items.isEmpty
        case .namespace, .loop, .function: return true
        }
    }

    /// The number when this is an int, float or bool (Python's bool is an int).
    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
    var integer: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    // MARK: str() and repr()

    /// Python's `str(value)`; Undefined renders as "" (jinja2's default Undefined).
    var pyStr: String {
        switch self {
        case .undefined: return ""
        case .string(let s), .markup(let s): return s
        default:
            var out = ""
            appendRepr(to: &out)
            return out
        }
    }

    /// Python's `repr(value)`.
    var pyRepr: String { var out = ""; appendRepr(to: &out); return out }

    func appendRepr(to out: inout String) {
        switch self {
        case .undefined: out += ""
        case .none: out += "None"
        case .bool(let b): out += b ? "True" : "False"
        case .int(let i): out += String(i)
        case .double(let d): out += Self.pyFloatRepr(d)
        case .string(let s): Self.appendStringRepr(s, to: &out)
        case .markup(let s): out += "Markup("; Self.appendStringRepr(s, to: &out); out += ")"
        case .list(let a):
            out += "["
            for (i, v) in a.enumerated() { if i > 0 { out += ", " }; v.appendRepr(to: &out) }
            out += "]"
        case .tuple(let a):
            out += "("
            for (i, v) in a.enumerated() { if i > 0 { out += ", " }; v.appendRepr(to: &out) }
            out += a.count == 1 ? ",)" : ")"
        case .dict(let d):
            out += "{"
            for i in 0..<d.count {
                if i > 0 { out += ", " }
                d.keys[i].appendRepr(to: &out)
                out += ": "
                d.values[i].appendRepr(to: &out)
            }
            out += "}"
        case .iterator(let it):
            switch it.kind {
            case .generator, .reverseIterator: out += "<\(it.typeName) object>"
            case .range(let start, let stop, let step): out += step == 1 ? "range(\(start), \(stop))" : "range(\(start), \(stop), \(step))"
            default:
                out += it.typeName + "("
                JinjaValue.list(it.items).appendRepr(to: &out)
                out += ")"
            }
        case .namespace(let ns):
            out += "<Namespace "
            JinjaValue.dict(ns.attributes).appendRepr(to: &out)
            out += ">"
        case .loop: out += "<LoopContext>"
        case .function(.macro(let m)): out += "<Macro '\(m.definition.name)'>"
        case .function(.method(_, let name)): out += "<built-in method \(name)>"
        case .function(.global(let name)): out += "<function \(name)>"
        }
    }

    /// Python's float repr: the shortest digits that round-trip, exponent form outside 1e-4 ..< 1e16.
    /// Swift's `description` is the same algorithm with the same switch points and spelling.
    static func pyFloatRepr(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return d.description
    }

    /// Python's repr of a str: single quotes unless the text has ' and no ", escapes for
    /// backslash, the quote, \n \r \t and characters Python does not print.
    static func appendStringRepr(_ s: String, to out: inout String) {
        let quote: Unicode.Scalar = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"") ? "\"" : "'"
        out.unicodeScalars.append(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case quote: out += "\\"; out.unicodeScalars.append(c)
            default:
                if isPyPrintable(c) {
                    out.unicodeScalars.append(c)
                } else if c.value < 0x100 {
                    out += "\\x" + hex(c.value, width: 2)
                } else if c.value < 0x10000 {
                    out += "\\u" + hex(c.value, width: 4)
                } else {
                    out += "\\U" + hex(c.value, width: 8)
                }
            }
        }
        out.unicodeScalars.append(quote)
    }

    static func hex(_ v: UInt32, width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// Python's str.isprintable for one character: everything but the Other and Separator
    /// categories, except the ASCII space.
    static func isPyPrintable(_ c: Unicode.Scalar) -> Bool {
        if c == " " { return true }
        switch c.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned,
             .lineSeparator, .paragraphSeparator, .spaceSeparator: return false
        default: return true
        }
    }

    // MARK: comparison

    /// Python's `==`. Strings compare code point by code point; Undefined equals only Undefined.
    func pyEquals(_ other: JinjaValue) -> Bool {
        switch (self.plain, other.plain) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let a), .string(let b)): return a.utf8.elementsEqual(b.utf8)
        case (.list(let a), .list(let b)), (.tuple(let a), .tuple(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.pyEquals($1) }
        case (.dict(let a), .dict(let b)):
            guard a.count == b.count else { return false }
            for i in 0..<a.count {
                guard let v = b[a.keys[i]], v.pyEquals(a.values[i]) else { return false }
            }
            return true
        case (.namespace(let a), .namespace(let b)): return a === b
        case (.loop(let a), .loop(let b)): return a === b
        case (.iterator(let a), .iterator(let b)):
            if a === b { return true }
            guard !a.isOneShot, a.kind == b.kind || (a.kind != .dictValues && b.kind != .dictValues && a.typeName == b.typeName) else { return false }
            return a.items.count == b.items.count && zip(a.items, b.items).allSatisfy { $0.pyEquals($1) }
        default:
            if let x = integer, let y = other.integer { return x == y }
            if let x = number, let y = other.number { return x == y }
            return false
        }
    }

    /// Python's `<`, `<=`, `>`, `>=`: numbers, strings (code point order, which is UTF-8 byte
    /// order), and lists or tuples element by element. Anything else is a TypeError.
    func pyCompare(_ other: JinjaValue, _ symbol: String) throws -> Int {
        switch (self.plain, other.plain) {
        case (.string(let a), .string(let b)):
            return a.utf8.lexicographicallyPrecedes(b.utf8) ? -1 : (a.utf8.elementsEqual(b.utf8) ? 0 : 1)
        case (.list(let a), .list(let b)), (.tuple(let a), .tuple(let b)):
            for (x, y) in zip(a, b) where !x.pyEquals(y) { return try x.pyCompare(y, symbol) }
            return a.count < b.count ? -1 : (a.count == b.count ? 0 : 1)
        default:
            if let x = integer, let y = other.integer { return x < y ? -1 : (x == y ? 0 : 1) }
            if let x = number, let y = other.number {
                if x.isNaN || y.isNaN { return 2 }  // every comparison with NaN is false
                return x < y ? -1 : (x == y ? 0 : 1)
            }
            throw JinjaTypeError("'\(symbol)' not supported between instances of '\(typeName)' and '\(other.typeName)'")
        }
    }

    /// Python's `a in b`.
    func pyContains(_ item: JinjaValue) throws -> Bool {
        switch self.plain {
        case .undefined: return false  // Undefined iterates as empty
        case .string(let s):
            guard case .string(let sub) = item.plain else {
                throw JinjaTypeError("'in <string>' requires string as left operand, not \(item.typeName)")
            }
            return Self.find(Array(sub.utf8), in: Array(s.utf8), from: 0) != nil
        case .list(let a), .tuple(let a): return a.contains { $0.pyEquals(item) }
        case .dict(let d): return d.index(of: item) != nil
        case .iterator(let it):
            guard it.isOneShot else { return it.items.contains { $0.pyEquals(item) } }
            while let v = it.next() { if v.pyEquals(item) { return true } }  // Python stops at the match
            return false
        case .namespace(let ns): return ns.attributes.index(of: item) != nil
        default: throw JinjaTypeError("argument of type '\(typeName)' is not iterable")
        }
    }

    /// The first byte offset at or after `from` where `needle` occurs in `haystack`.
    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        if needle.isEmpty { return from <= haystack.count ? from : nil }
        guard haystack.count >= needle.count else { return nil }
        let first = needle[0]
        var i = from
        let last = haystack.count - needle.count
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    // MARK: sequences

    /// Python's `len()`; Undefined has length 0.
    func pyLen() throws -> Int {
        switch self {
        case .undefined: return 0
        case .string(let s), .markup(let s): return s.unicodeScalars.count
        case .list(let a), .tuple(let a): return a.count
        case .dict(let d): return d.count
        case .iterator(let it) where !it.isOneShot: return it.items.count
        case .namespace(let ns): return ns.attributes.count
        default: throw JinjaTypeError("object of type '\(typeName)' has no len()")
        }
    }

    /// What `for x in value` visits: code points of a string, keys of a dict, nothing for Undefined.
    func pyIterate() throws -> [JinjaValue] {
        switch self {
        case .undefined: return []
        case .string(let s), .markup(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .list(let a), .tuple(let a): return a
        case .dict(let d): return d.keys
        case .iterator(let it): return it.drain()
        default: throw JinjaTypeError("'\(typeName)' object is not iterable")
        }
    }

    /// Python's slice `value[start:stop:step]` on a string, list or tuple.
    func pySlice(start: Int?, stop: Int?, step: Int?) throws -> JinjaValue {
        let step = step ?? 1
        guard step != 0 else { throw JinjaTypeError("slice step cannot be zero") }
        func indices(_ n: Int) -> [Int] {
            func clamp(_ v: Int?, _ defaultValue: Int, low: Int, high: Int) -> Int {
                guard var v else { return defaultValue }
                if v < 0 { v += n }
                return min(max(v, low), high)
            }
            if step > 0 {
                let a = clamp(start, 0, low: 0, high: n), b = clamp(stop, n, low: 0, high: n)
                return a < b ? Array(stride(from: a, to: b, by: step)) : []
            }
            let a = clamp(start, n - 1, low: -1, high: n - 1), b = clamp(stop, -1, low: -1, high: n - 1)
            return a > b ? Array(stride(from: a, to: b, by: step)) : []
        }
        switch self.plain {
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            if step == 1 {
                let idx = indices(scalars.count)
                guard let first = idx.first, let last = idx.last else { return .string("") }
                var v = String.UnicodeScalarView()
                v.append(contentsOf: scalars[first...last])
                return .string(String(v))
            }
            var v = String.UnicodeScalarView()
            for i in indices(scalars.count) { v.append(scalars[i]) }
            return .string(String(v))
        case .list(let a): return .list(indices(a.count).map { a[$0] })
        case .tuple(let a): return .tuple(indices(a.count).map { a[$0] })
        case .iterator(let it):
            guard case .range = it.kind else { fallthrough }
            return .list(indices(it.items.count).map { it.items[$0] })
        default: throw JinjaTypeError("'\(typeName)' object is not subscriptable")
        }
    }

    // MARK: arithmetic

    /// Python's binary operators (`+ - * / // % **`); Undefined operands fail as jinja2's do.
    static func arithmetic(_ op: JinjaBinaryOperator, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        if case .undefined(let what) = a { throw JinjaUndefinedError(what) }
        if case .undefined(let what) = b { throw JinjaUndefinedError(what) }
        func unsupported() -> JinjaTypeError {
            JinjaTypeError("unsupported operand type(s) for \(op.rawValue): '\(a.typeName)' and '\(b.typeName)'")
        }
        func checked(_ r: (Int, Bool)) throws -> JinjaValue {
            if r.1 { throw JinjaTypeError("integer overflow in \(op.rawValue) (Offload's integers are 64-bit)") }
            return .int(r.0)
        }
        if op == .add, let x = a.stringValue, let y = b.stringValue, a.isMarkup || b.isMarkup {
            // Markup + str escapes the str; str + Markup too (Markup.__radd__).
            return .markup((a.isMarkup ? x : htmlEscape(x)) + (b.isMarkup ? y : htmlEscape(y)))
        }
        let (a, b) = (a.plain, b.plain)
        switch op {
        case .add:
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.list(let x), .list(let y)): return .list(x + y)
            case (.tuple(let x), .tuple(let y)): return .tuple(x + y)
            default: break
            }
            if let x = a.integer, let y = b.integer { return try checked(x.addingReportingOverflow(y)) }
            if let x = a.number, let y = b.number { return .double(x + y) }
            if case .string = a { throw JinjaTypeError("can only concatenate str (not \"\(b.typeName)\") to str") }
            throw unsupported()
        case .subtract:
            if let x = a.integer, let y = b.integer { return try checked(x.subtractingReportingOverflow(y)) }
            if let x = a.number, let y = b.number { return .double(x - y) }
            throw unsupported()
        case .multiply:
            if let x = a.integer, let y = b.integer { return try checked(x.multipliedReportingOverflow(by: y)) }
            if let x = a.number, let y = b.number { return .double(x * y) }
            func repeated(_ v: JinjaValue, _ n: Int) -> JinjaValue? {
                switch v {
                case .string(let s): return .string(String(repeating: s, count: max(0, n)))
                case .list(let l): return .list(Array(Array(repeating: l, count: max(0, n)).joined()))
                case .tuple(let l): return .tuple(Array(Array(repeating: l, count: max(0, n)).joined()))
                default: return nil
                }
            }
            if let n = b.integer, let r = repeated(a, n) { return r }
            if let n = a.integer, let r = repeated(b, n) { return r }
            throw unsupported()
        case .divide:
            guard let x = a.number, let y = b.number else { throw unsupported() }
            guard y != 0 else { throw JinjaTypeError("division by zero") }
            return .double(x / y)
        case .floorDivide, .modulo:
            if let x = a.integer, let y = b.integer {
                guard y != 0 else { throw JinjaTypeError("integer division or modulo by zero") }
                var q = x / y, r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { q -= 1; r += y }
                return .int(op == .floorDivide ? q : r)
            }
            if op == .modulo, case .string(let format) = a { return .string(try percentFormat(format, b)) }
            guard let x = a.number, let y = b.number else { throw unsupported() }
            guard y != 0 else { throw JinjaTypeError("float division or modulo by zero") }
            var r = fmod(x, y)
            if r != 0 && ((r < 0) != (y < 0)) { r += y }
            if op == .modulo { return .double(r == 0 ? (y < 0 ? -0.0 : 0.0) : r) }
            return .double(((x - r) / y).rounded())
        case .power:
            if let x = a.integer, let y = b.integer, y >= 0 {
                var result = 1, base = x, e = y
                while e > 0 {
                    if e & 1 == 1 { result = try checked(result.multipliedReportingOverflow(by: base)).integer! }
                    e >>= 1
                    if e > 0 { base = try checked(base.multipliedReportingOverflow(by: base)).integer! }
                }
                return .int(result)
            }
            guard let x = a.number, let y = b.number else { throw unsupported() }
            return .double(Foundation.pow(x, y))
        }
    }

    /// printf-style `'%s' % value` for %s, %r, %d, %i and %%; anything else is refused.
    static func percentFormat(_ format: String, _ arguments: JinjaValue) throws -> String {
        var args: [JinjaValue]
        if case .tuple(let t) = arguments { args = t } else { args = [arguments] }
        var out = ""
        var it = format.unicodeScalars.makeIterator()
        while let c = it.next() {
            guard c == "%" else { out.unicodeScalars.append(c); continue }
            guard let spec = it.next() else { throw JinjaTypeError("incomplete format") }
            if spec == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw JinjaTypeError("not enough arguments for format string") }
            let v = args.removeFirst()
            switch spec {
            case "s": out += v.pyStr
            case "r": out += v.pyRepr
            case "d", "i":
                guard let n = v.number else { throw JinjaTypeError("%\(spec) format: a real number is required, not \(v.typeName)") }
                out += String(v.integer ?? Int(n.rounded(.towardZero)))
            default: throw JinjaTypeError("the '%\(spec)' format is not supported (only %s, %r, %d, %i, %%)")
            }
        }
        if !args.isEmpty { throw JinjaTypeError("not all arguments converted during string formatting") }
        return out
    }
}

extension JinjaValue {
    var isMarkup: Bool { if case .markup = self { return true }; return false }

    /// markupsafe.escape of a plain str.
    static func htmlEscape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&#34;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

/// Using an Undefined where jinja2 fails (arithmetic, attribute access, calling it).
struct JinjaUndefinedError: Error { let what: String; init(_ w: String) { what = w } }

enum JinjaBinaryOperator: String, Sendable {
    case add = "+", subtract = "-", multiply = "*", divide = "/", floorDivide = "//", modulo = "%", power = "**"
}

// MARK: Python's whitespace and case

enum PyText {
    /// Python's str.isspace() (also what `\s` matches in a str pattern).
    static func isSpace(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default: return false
        }
    }

    static func string<S: Sequence>(_ scalars: S) -> String where S.Element == Unicode.Scalar {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(scalars.underestimatedCount)
        for c in scalars { UTF8.encode(c) { bytes.append($0) } }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// str.strip / lstrip / rstrip: whitespace, or any of `chars`.
    static func strip(_ s: String, chars: String?, left: Bool, right: Bool) -> String {
        let v = s.unicodeScalars
        let set = chars.map { Set($0.unicodeScalars) }
        func strippable(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c) } ?? isSpace(c) }
        var a = v.startIndex, b = v.endIndex
        if left { while a < b && strippable(v[a]) { a = v.index(after: a) } }
        if right {
            while b > a {
                let p = v.index(before: b)
                guard strippable(v[p]) else { break }
                b = p
            }
        }
        if a == v.startIndex && b == v.endIndex { return s }
        return String(v[a..<b])
    }

    static func upper(_ s: String) -> String { s.uppercased() }
    static func lower(_ s: String) -> String { s.lowercased() }

    /// str.title(): a cased character after an uncased one is title-cased, after a cased one lower-cased.
    static func title(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s.unicodeScalars {
            out += previousCased ? c.properties.lowercaseMapping : c.properties.titlecaseMapping
            previousCased = c.properties.isCased
        }
        return out
    }

    /// str.capitalize(): the first character title-cased, the rest lower-cased.
    static func capitalize(_ s: String) -> String {
        var out = ""
        for (i, c) in s.unicodeScalars.enumerated() {
            out += i == 0 ? c.properties.titlecaseMapping : c.properties.lowercaseMapping
        }
        return out
    }

    /// str.split(sep, maxsplit): with no separator, runs of whitespace split and ends are dropped.
    static func split(_ s: String, separator: String?, maxSplit: Int) -> [String] {
        if let separator {
            let hay = Array(s.utf8), needle = Array(separator.utf8)
            var parts: [String] = []
            var start = 0
            while maxSplit < 0 || parts.count < maxSplit, let at = JinjaValue.find(needle, in: hay, from: start) {
                parts.append(String(decoding: hay[start..<at], as: UTF8.self))
                start = at + needle.count
            }
            parts.append(String(decoding: hay[start...], as: UTF8.self))
            return parts
        }
        let scalars = Array(s.unicodeScalars)
        var parts: [String] = []
        var i = 0
        while i < scalars.count {
            while i < scalars.count && isSpace(scalars[i]) { i += 1 }
            if i == scalars.count { break }
            if maxSplit >= 0 && parts.count == maxSplit {
                var end = scalars.count
                while end > i && isSpace(scalars[end - 1]) { end -= 1 }
                parts.append(string(scalars[i..<end]))
                break
            }
            let start = i
            while i < scalars.count && !isSpace(scalars[i]) { i += 1 }
            parts.append(string(scalars[start..<i]))
        }
        return parts
    }

    /// str.replace(old, new, count): an empty `old` inserts `new` around every character, as Python does.
    static func replace(_ s: String, _ old: String, _ new: String, count: Int) -> String {
        if old.isEmpty {
            var out = ""
            var n = 0
            for c in s.unicodeScalars {
                if count < 0 || n < count { out += new; n += 1 }
                out.unicodeScalars.append(c)
            }
            if count < 0 || n < count { out += new }
            return out
        }
        let hay = Array(s.utf8), needle = Array(old.utf8)
        var out = [UInt8]()
        out.reserveCapacity(hay.count)
        var start = 0, n = 0
        while count < 0 || n < count, let at = JinjaValue.find(needle, in: hay, from: start) {
            out.append(contentsOf: hay[start..<at])
            out.append(contentsOf: new.utf8)
            start = at + needle.count
            n += 1
        }
        if n == 0 { return s }
        out.append(contentsOf: hay[start...])
        return String(decoding: out, as: UTF8.self)
    }

    /// str.splitlines(): Python's line boundaries, \r\n as one.
    static func splitLines(_ s: String) -> [String] {
        let scalars = Array(s.unicodeScalars)
        var lines: [String] = []
        var start = 0, i = 0
        while i < scalars.count {
            switch scalars[i].value {
            case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
                lines.append(string(scalars[start..<i]))
                if scalars[i] == "\r" && i + 1 < scalars.count && scalars[i + 1] == "\n" { i += 1 }
                start = i + 1
            default: break
            }
            i += 1
        }
        if start < scalars.count { lines.append(string(scalars[start...])) }
        return lines
    }
}
