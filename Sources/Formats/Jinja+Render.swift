// The interpreter: walks the tree Jinja.swift parses with jinja2's scoping (a for loop's body is a
// fresh scope every iteration, so a plain `set` inside it never leaks out; `if` makes no scope;
// namespaces are shared), jinja2's Undefined, and the ImmutableSandboxedEnvironment transformers
// renders chat templates in (no method that changes a list or dict). Filters, tests and methods
// live in Jinja+Filters.swift.

import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// A parsed template, ready to render any number of times.
struct JinjaTemplate: Sendable {
    let nodes: [JinjaNode]
    /// Where the template came from, for error messages.
    let origin: String

    init(source: String, origin: String) throws {
        self.origin = origin
        let fail = JinjaTemplate.failure(origin)
        var lexer = JinjaLexer(source, fail: fail)
        var parser = JinjaParser(tokens: try lexer.tokenize(), fail: fail)
        nodes = try parser.parseTemplate()
    }

    static func failure(_ origin: String) -> (Int, String) -> OffloadError {
        { line, message in OffloadError("[chat template] \(origin) line \(line): \(message)") }
    }

    /// Renders with `variables` as the template's context; `now` is what `strftime_now` formats.
    func render(_ variables: [String: JinjaValue], now: Date) throws -> String {
        let renderer = JinjaRenderer(origin: origin, now: now)
        let scope = JinjaScope(parent: nil)
        scope.variables = variables
        var out = ""
        out.reserveCapacity(4096)
        _ = try renderer.run(nodes, scope, into: &out)
        return out
    }
}

/// Variables of one scope; lookups fall back to the enclosing scope.
final class JinjaScope {
    var variables: [String: JinjaValue] = [:]
    let parent: JinjaScope?
    init(parent: JinjaScope?) { self.parent = parent }

    func lookup(_ name: String) -> JinjaValue? {
        var s: JinjaScope? = self
        while let scope = s {
            if let v = scope.variables[name] { return v }
            s = scope.parent
        }
        return nil
    }
}

/// Evaluated call arguments.
struct JinjaCallArguments {
    var positional: [JinjaValue] = []
    var keyword: [(name: String, value: JinjaValue)] = []

    /// Binds to a Python signature: one slot per name, nil where neither a positional nor a keyword
    /// argument gave one. Too many positional arguments or an unknown keyword is a TypeError.
    func bind(_ names: [String], _ function: String) throws -> [JinjaValue?] {
        guard positional.count <= names.count else {
            throw JinjaTypeError("\(function)() takes at most \(names.count) argument\(names.count == 1 ? "" : "s") (\(positional.count) given)")
        }
        var slots: [JinjaValue?] = positional.map { $0 } + Array(repeating: nil, count: names.count - positional.count)
        for (name, value) in keyword {
            guard let i = names.firstIndex(of: name) else { throw JinjaTypeError("\(function)() got an unexpected keyword argument '\(name)'") }
            guard slots[i] == nil else { throw JinjaTypeError("\(function)() got multiple values for argument '\(name)'") }
            slots[i] = value
        }
        return slots
    }
}

final class JinjaRenderer {
    enum Flow { case normal, breakLoop, continueLoop }

    let origin: String
    let now: Date
    private var macroDepth = 0
    private let fail: (Int, String) -> OffloadError

    init(origin: String, now: Date) {
        self.origin = origin
        self.now = now
        fail = JinjaTemplate.failure(origin)
    }

    /// Turns Python-level failures into an OffloadError naming the line.
    func located<T>(_ line: Int, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as JinjaTypeError {
            throw fail(line, e.message)
        } catch let e as JinjaUndefinedError {
            throw fail(line, e.what)
        }
    }

    // MARK: statements

    func run(_ nodes: [JinjaNode], _ scope: JinjaScope, into out: inout String) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t):
                out += t
            case .output(let e):
                let v = try eval(e, scope)
                switch v {
                case .string(let s), .markup(let s): out += s
                case .undefined: break
                default: v.appendRepr(to: &out)
                }
            case .conditional(let branches, let otherwise):
                var chosen = otherwise
                for (test, body) in branches {
                    if try eval(test, scope).truthy { chosen = body; break }
                }
                let flow = try run(chosen, scope, into: &out)
                if flow != .normal { return flow }
            case .forLoop(let loop):
                try runFor(loop, scope, into: &out)
            case .set(let target, let e, let line):
                try assign(target, try eval(e, scope), scope, line: line)
            case .setBlock(let target, let filters, let body, let line):
                var captured = ""
                _ = try run(body, JinjaScope(parent: scope), into: &captured)
                var value = JinjaValue.string(captured)
                for f in filters { value = try applyFilter(f, to: value, scope) }
                try assign(target, value, scope, line: line)
            case .macro(let definition):
                scope.variables[definition.name] = .function(.macro(JinjaMacro(definition, scope: scope)))
            case .filterBlock(let filters, let body):
                var captured = ""
                _ = try run(body, JinjaScope(parent: scope), into: &captured)
                var value = JinjaValue.string(captured)
                for f in filters { value = try applyFilter(f, to: value, scope) }
                out += value.pyStr
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            }
        }
        return .normal
    }

    private func runFor(_ loop: JinjaForLoop, _ scope: JinjaScope, into out: inout String) throws {
        let iterable = try eval(loop.iterable, scope)
        var items = try located(loop.line) { try iterable.pyIterate() }
        if let condition = loop.condition {
            items = try items.filter { item in
                let s = JinjaScope(parent: scope)
                try assign(loop.target, item, s, line: loop.line)
                return try eval(condition, s).truthy
            }
        }
        if items.isEmpty {
            _ = try run(loop.otherwise, JinjaScope(parent: scope), into: &out)
            return
        }
        let state = JinjaLoop(items: items, depth0: 0)
        for (i, item) in items.enumerated() {
            state.index0 = i
            // A fresh scope per iteration: jinja2 starts every iteration from the enclosing values.
            let s = JinjaScope(parent: scope)
            s.variables["loop"] = .loop(state)
            try assign(loop.target, item, s, line: loop.line)
            if try run(loop.body, s, into: &out) == .breakLoop { break }
        }
    }

    private func assign(_ target: JinjaTarget, _ value: JinjaValue, _ scope: JinjaScope, line: Int) throws {
        switch target {
        case .name(let n):
            scope.variables[n] = value
        case .namespaceAttribute(let n, let attribute):
            guard case .namespace(let ns) = scope.lookup(n) ?? .undefined("") else {
                throw fail(line, "cannot assign attribute '\(attribute)' on '\(n)': it is not a namespace()")
            }
            guard !attribute.hasPrefix("_") else {
                throw fail(line, "chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(attribute)'")
            }
            ns.attributes[.string(attribute)] = value
        case .tuple(let targets):
            let items = try located(line) { try value.pyIterate() }
            guard items.count == targets.count else {
                throw fail(line, items.count < targets.count
                    ? "not enough values to unpack (expected \(targets.count), got \(items.count))"
                    : "too many values to unpack (expected \(targets.count))")
            }
            for (t, v) in zip(targets, items) { try assign(t, v, scope, line: line) }
        }
    }

    // MARK: expressions

    func eval(_ e: JinjaExpression, _ scope: JinjaScope) throws -> JinjaValue {
        switch e.kind {
        case .constant(let c):
            switch c {
            case .none: return .none
            case .bool(let b): return .bool(b)
            case .int(let i): return .int(i)
            case .double(let d): return .double(d)
            case .string(let s): return .string(s)
            }
        case .name(let n):
            if let v = scope.lookup(n) { return v }
            if Self.globals.contains(n) { return .function(.global(n)) }
            return .undefined("'\(n)' is undefined")
        case .list(let items):
            return .list(try items.map { try eval($0, scope) })
        case .tuple(let items):
            return .tuple(try items.map { try eval($0, scope) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try eval(k, scope)
                switch key {
                case .list, .dict, .namespace, .loop, .undefined: throw fail(k.line, "unhashable type: '\(key.typeName)'")
                default: d[key] = try eval(v, scope)
                }
            }
            return .dict(d)
        case .attribute(let object, let name):
            let v = try eval(object, scope)
            return try located(e.line) { try attribute(v, name) }
        case .item(let object, let key):
            let v = try eval(object, scope)
            let k = try eval(key, scope)
            return try located(e.line) { try item(v, k) }
        case .slice(let object, let a, let b, let c):
            let v = try eval(object, scope)
            func bound(_ x: JinjaExpression?) throws -> Int? {
                guard let x else { return nil }
                let v = try eval(x, scope)
                if v.isNone { return nil }
                guard let i = v.integer else { throw fail(x.line, "slice indices must be integers or None, not \(v.typeName)") }
                return i
            }
            let (start, stop, step) = (try bound(a), try bound(b), try bound(c))
            return try located(e.line) {
                if case .undefined(let what) = v { throw JinjaUndefinedError(what) }
                return try v.pySlice(start: start, stop: stop, step: step)
            }
        case .call(let callee, let arguments):
            let f = try eval(callee, scope)
            let args = try evalArguments(arguments, scope)
            return try call(f, args, line: e.line)
        case .filter(let subject, let f):
            return try applyFilter(f, to: try eval(subject, scope), scope)
        case .test(let subject, let name, let arguments):
            let v = try eval(subject, scope)
            let args = try evalArguments(arguments, scope)
            return .bool(try located(e.line) { try test(name, v, args.positional, line: e.line) })
        case .not(let x):
            return .bool(!(try eval(x, scope).truthy))
        case .negate(let x), .plus(let x):
            let v = try eval(x, scope)
            let negate: Bool
            if case .negate = e.kind { negate = true } else { negate = false }
            return try located(e.line) {
                switch v {
                case .int(let i): return .int(negate ? -i : i)
                case .bool(let b): return .int(negate ? (b ? -1 : 0) : (b ? 1 : 0))
                case .double(let d): return .double(negate ? -d : d)
                case .undefined(let what): throw JinjaUndefinedError(what)
                default: throw JinjaTypeError("bad operand type for unary \(negate ? "-" : "+"): '\(v.typeName)'")
                }
            }
        case .binary(let op, let a, let b):
            let x = try eval(a, scope), y = try eval(b, scope)
            return try located(e.line) { try JinjaValue.arithmetic(op, x, y) }
        case .concat(let items):
            var s = ""
            for item in items { s += try eval(item, scope).pyStr }
            return .string(s)
        case .and(let a, let b):
            let x = try eval(a, scope)
            return x.truthy ? try eval(b, scope) : x
        case .or(let a, let b):
            let x = try eval(a, scope)
            return x.truthy ? x : try eval(b, scope)
        case .compare(let first, let ops):
            var left = try eval(first, scope)
            for (op, operandExpression) in ops {
                let right = try eval(operandExpression, scope)
                let holds: Bool = try located(operandExpression.line) {
                    switch op {
                    case "==": return left.pyEquals(right)
                    case "!=": return !left.pyEquals(right)
                    case "in": return try right.pyContains(left)
                    case "not in": return !(try right.pyContains(left))
                    default:
                        if case .undefined(let what) = left { throw JinjaUndefinedError(what) }
                        if case .undefined(let what) = right { throw JinjaUndefinedError(what) }
                        let c = try left.pyCompare(right, op)
                        if c == 2 { return false }
                        switch op {
                        case "<": return c < 0
                        case "<=": return c <= 0
                        case ">": return c > 0
                        default: return c >= 0
                        }
                    }
                }
                if !holds { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .conditional(let test, let then, let otherwise):
            if try eval(test, scope).truthy { return try eval(then, scope) }
            if let otherwise { return try eval(otherwise, scope) }
            return .undefined("the inline if-expression on line \(e.line) evaluated to false and no else section was defined")
        }
    }

    func evalArguments(_ arguments: JinjaArguments, _ scope: JinjaScope) throws -> JinjaCallArguments {
        var args = JinjaCallArguments()
        args.positional = try arguments.positional.map { try eval($0, scope) }
        args.keyword = try arguments.keyword.map { ($0.name, try eval($0.value, scope)) }
        return args
    }

    // MARK: attribute and item access (jinja2's sandboxed getattr / getitem)

    static let globals: Set<String> = ["range", "namespace", "dict", "raise_exception", "strftime_now", "lipsum", "cycler", "joiner"]

    static let stringMethods: Set<String> = [
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format", "format_map",
        "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
        "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
        "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
    ]
    static let dictMethods: Set<String> = ["clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values"]
    static let listMethods: Set<String> = ["append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort"]

    /// `value.name`: a method of str, dict or list, else (for a dict) the item, else Undefined.
    func attribute(_ value: JinjaValue, _ name: String) throws -> JinjaValue {
        let value = value.plain
        switch value {
        case .undefined(let what): throw JinjaUndefinedError(what)
        case .string where Self.stringMethods.contains(name): return .function(.method(value, name))
        case .dict(let d):
            if Self.dictMethods.contains(name) { return .function(.method(value, name)) }
            return d[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        case .list where Self.listMethods.contains(name), .tuple where name == "count" || name == "index":
            return .function(.method(value, name))
        case .namespace(let ns):
            return ns.attributes[name] ?? .undefined("'Namespace object' has no attribute '\(name)'")
        case .loop(let loop):
            return loop.attribute(name) ?? .undefined("'LoopContext object' has no attribute '\(name)'")
        default:
            return .undefined("'\(value.typeName) object' has no attribute '\(name)'")
        }
    }

    /// `value[key]`: an index (negative from the end), a dict item, else the attribute of that name.
    func item(_ value: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        let (value, key) = (value.plain, key.plain)
        switch (value, key) {
        case (.undefined(let what), _): throw JinjaUndefinedError(what)
        case (.list(let a), _), (.tuple(let a), _):
            if let i = key.integer {
                let j = i < 0 ? i + a.count : i
                return j >= 0 && j < a.count ? a[j] : .undefined("\(value.typeName) object has no element \(i)")
            }
        case (.string(let s), _):
            if let i = key.integer {
                let scalars = Array(s.unicodeScalars)
                let j = i < 0 ? i + scalars.count : i
                return j >= 0 && j < scalars.count ? .string(String(scalars[j])) : .undefined("str object has no element \(i)")
            }
        case (.dict(let d), _):
            if let v = d[key] { return v }
        case (.iterator(let it), _):
            if case .range = it.kind, let i = key.integer {
                let j = i < 0 ? i + it.items.count : i
                return j >= 0 && j < it.items.count ? it.items[j] : .undefined("range object has no element \(i)")
            }
        default: break
        }
        if case .string(let name) = key { return try attribute(value, name) }
        return .undefined("'\(value.typeName) object' has no attribute \(key.pyRepr)")
    }

    // MARK: calls

    func call(_ callee: JinjaValue, _ args: JinjaCallArguments, line: Int) throws -> JinjaValue {
        switch callee {
        case .undefined(let what):
            throw fail(line, what)
        case .function(.macro(let macro)):
            return try callMacro(macro, args, line: line)
        case .function(.method(let receiver, let name)):
            return try located(line) { try callMethod(receiver.plain, name, args, line: line) }
        case .function(.global(let name)):
            return try located(line) { try callGlobal(name, args, line: line) }
        default:
            throw fail(line, "'\(callee.typeName)' object is not callable")
        }
    }

    private func callMacro(_ macro: JinjaMacro, _ args: JinjaCallArguments, line: Int) throws -> JinjaValue {
        let definition = macro.definition
        guard args.positional.count <= definition.parameters.count else {
            throw fail(line, "macro '\(definition.name)' takes not more than \(definition.parameters.count) argument(s)")
        }
        guard macroDepth < 100 else { throw fail(line, "macro '\(definition.name)': calls nested deeper than 100") }
        let scope = JinjaScope(parent: macro.scope)
        for (name, _) in args.keyword where !definition.parameters.contains(where: { $0.name == name }) {
            throw fail(line, "macro '\(definition.name)' takes no keyword argument '\(name)'")
        }
        for (i, parameter) in definition.parameters.enumerated() {
            if i < args.positional.count {
                scope.variables[parameter.name] = args.positional[i]
            } else if let v = args.keyword.first(where: { $0.name == parameter.name })?.value {
                scope.variables[parameter.name] = v
            } else if let d = parameter.defaultValue {
                scope.variables[parameter.name] = try eval(d, scope)
            } else {
                scope.variables[parameter.name] = .undefined("parameter '\(parameter.name)' was not provided")
            }
        }
        macroDepth += 1
        defer { macroDepth -= 1 }
        var out = ""
        _ = try run(definition.body, scope, into: &out)
        return .string(out)
    }

    private func callGlobal(_ name: String, _ args: JinjaCallArguments, line: Int) throws -> JinjaValue {
        switch name {
        case "raise_exception":
            let message = try args.bind(["message"], name)[0]?.pyStr ?? ""
            throw fail(line, "the template raised an error: \(message)")
        case "strftime_now":
            guard let format = try args.bind(["format"], name)[0]?.stringValue else {
                throw JinjaTypeError("strftime_now() needs a format string")
            }
            return .string(Self.formatTime(format, now))
        case "range":
            guard args.keyword.isEmpty, (1...3).contains(args.positional.count) else {
                throw JinjaTypeError("range expected 1 to 3 integer arguments")
            }
            let ints = try args.positional.map { v -> Int in
                guard let i = v.integer else { throw JinjaTypeError("'\(v.typeName)' object cannot be interpreted as an integer") }
                return i
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
            guard step != 0 else { throw JinjaTypeError("range() arg 3 must not be zero") }
            let count = step > 0 ? max(0, (stop - start + step - 1) / step) : max(0, (start - stop - step - 1) / -step)
            guard count <= 100_000 else { throw JinjaTypeError("range too big, maximum size for range is 100000") }
            return .iterator(JinjaIterator(.range(start: start, stop: stop, step: step), (0..<count).map { .int(start + $0 * step) }))
        case "namespace", "dict":
            var d = JinjaDict()
            for p in args.positional {
                switch p {
                case .dict(let given): for (k, v) in given.items { d[k] = v }
                case .list, .tuple, .iterator:
                    for pair in try p.pyIterate() {
                        let kv = try pair.pyIterate()
                        guard kv.count == 2 else { throw JinjaTypeError("\(name)() sequence elements must be pairs") }
                        d[kv[0]] = kv[1]
                    }
                default: throw JinjaTypeError("'\(p.typeName)' object is not iterable")
                }
            }
            for (k, v) in args.keyword { d[.string(k)] = v }
            if name == "dict" { return .dict(d) }
            for k in d.keys {
                if case .string(let s) = k, s.hasPrefix("_") {
                    throw JinjaTypeError("chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(s)'")
                }
            }
            return .namespace(JinjaNamespace(d))
        default:
            throw JinjaTypeError("the global '\(name)' is not supported")
        }
    }

    /// C's strftime on the local time of `date`, as Python's datetime.now().strftime does it.
    static func formatTime(_ format: String, _ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        localtime_r(&t, &parts)
        // Python expands %f (microseconds) itself; C has no such directive.
        let micro = Int((date.timeIntervalSince1970 - Double(t)) * 1_000_000)
        let expanded = PyText.replace(format, "%f", String(format: "%06d", micro), count: -1)
        var buffer = [CChar](repeating: 0, count: 1024)
        #if canImport(Glibc)
        let n = Glibc.strftime(&buffer, buffer.count, expanded, &parts)
        #else
        let n = Darwin.strftime(&buffer, buffer.count, expanded, &parts)
        #endif
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
