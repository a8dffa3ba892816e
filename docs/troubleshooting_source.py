"""Reading metcli's source for docs/make_troubleshooting.py, with :mod:`ast` only.

:func:`load_modules` parses ``toolkit/`` and ``cli/`` (module names, constants, imports,
functions and the import graph, a room's lazy ``_API`` names resolved to their modules);
:func:`reach` gives the commands that reach each module; :class:`Renderer` turns a
message expression into text: literal parts kept, values shown as ``<expr>``, branches,
local assignments, loops over written-out lists and small helpers followed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_PLACEHOLDER = 40


# ----------------------------------------------------------------------------- source model
@dataclass
class Module:
    name: str  # dotted: metcli.io.files, metcli.cli.segment
    key: str  # io/files.py (library) or cli/segment.py
    tree: ast.Module
    consts: dict[str, ast.expr] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    funcs: dict[str, ast.FunctionDef] = field(default_factory=dict)  # bare name -> node
    edges: set[str] = field(default_factory=set)


def _module_name(path: Path) -> tuple[str, str]:
    rel = path.relative_to(REPO)
    if rel.parts[0] == "cli":
        return "metcli.cli." + path.stem, rel.as_posix()
    parts = list(rel.with_suffix("").parts[1:])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["metcli", *parts]), rel.relative_to("toolkit").as_posix()


def _package_api(path: Path) -> dict[str, str]:
    """``_API`` of a room's ``__init__.py``: public name -> module (relative)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_API":
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}
    return {}


def load_modules() -> dict[str, Module]:
    paths = sorted((REPO / "toolkit").rglob("*.py")) + sorted((REPO / "cli").glob("*.py"))
    apis = {_module_name(p)[0]: _package_api(p) for p in paths if p.name == "__init__.py"}
    modules = {}
    for path in paths:
        name, key = _module_name(path)
        mod = Module(name, key, ast.parse(path.read_text(), filename=str(path)))
        _index(mod, apis, path.name == "__init__.py")
        modules[name] = mod
    names = set(modules)
    for mod in modules.values():
        mod.edges = {e for e in mod.edges if e in names and e != mod.name}
    return modules


def _index(mod: Module, apis: dict[str, dict[str, str]], is_package: bool) -> None:
    for node in mod.tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            if isinstance(node.targets[0], ast.Name):
                mod.consts[node.targets[0].id] = node.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mod.funcs[node.name] = node  # module-level functions first, then the others
    for node in ast.walk(mod.tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mod.funcs.setdefault(node.name, node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("metcli"):
                    mod.edges.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.name.split(".")
                base = ".".join(here[: len(here) - node.level + (1 if is_package else 0)])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("metcli"):
                continue
            for alias in node.names:
                target = base
                if alias.name in apis.get(base, {}):
                    target = f"{base}.{apis[base][alias.name]}"
                mod.imports[alias.asname or alias.name] = (target, alias.name)
                mod.edges.update({target, f"{base}.{alias.name}"})


def commands(modules: dict[str, Module]) -> dict[str, str]:
    """Command name -> its cli module, from ``COMMANDS`` of ``cli/main.py``."""
    for node in modules["metcli.cli.main"].tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMANDS":
            pairs = zip(node.value.keys, node.value.values)
            return {k.value: f"metcli.cli.{v.value}" for k, v in pairs}
    raise SystemExit("cli/main.py has no COMMANDS table")


def reach(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the commands whose cli module reaches it through imports."""
    out: dict[str, set[str]] = {name: set() for name in modules}
    for command, start in commands(modules).items():
        seen, todo = {start, "metcli.cli.main"}, [start, "metcli.cli.main"]
        while todo:
            for nxt in modules[todo.pop()].edges - seen:
                seen.add(nxt)
                todo.append(nxt)
        for name in seen:
            out[name].add(command)
    return out


def error_classes(modules: dict[str, Module]) -> tuple[set[str], dict[str, ast.FunctionDef]]:
    """Names of MetcliError and its subclasses; those with their own ``__init__``."""
    known, own_init, changed = {"MetcliError"}, {}, True
    while changed:
        changed = False
        for mod in modules.values():
            for node in ast.walk(mod.tree):
                if not isinstance(node, ast.ClassDef) or node.name in known:
                    continue
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                if bases & known:
                    known.add(node.name)
                    changed = True
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                            own_init[node.name] = item
    return known, own_init


def class_parents(modules: dict[str, Module]) -> dict[str, list[str]]:
    parents = {}
    for mod in modules.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                parents[node.name] = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
    return parents


# ----------------------------------------------------------------------------- rendering
@dataclass
class Ctx:
    mod: Module
    func: ast.FunctionDef | None
    qual: str
    env: dict[str, str | None] = field(default_factory=dict)


def placeholder(expr: ast.expr) -> str:
    text = " ".join(ast.unparse(expr).split())
    if len(text) > MAX_PLACEHOLDER and isinstance(expr, ast.Call):
        text = " ".join(ast.unparse(expr.func).split()) + "(...)"
    if len(text) > MAX_PLACEHOLDER:
        text = text[: MAX_PLACEHOLDER - 3] + "..."
    return f"<{text}>"


def _params(func: ast.FunctionDef | None) -> list[str]:
    if func is None:
        return []
    a = func.args
    return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]


def _assigned(func: ast.FunctionDef | None) -> set[str]:
    """Names a function assigns itself (imports left out: they name constants)."""
    if func is None:
        return set()
    names = set()
    for node in _own_nodes(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _own_nodes(func: ast.AST):
    """The nodes of a function's body, nested functions and classes left out."""
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


class Renderer:
    """Message text from expressions: literal text kept, values shown as ``<expr>``."""

    def __init__(self, modules: dict[str, Module]):
        self.modules = modules

    def constant(self, mod: Module, name: str) -> tuple[Module, ast.expr] | None:
        if name in mod.consts:
            return mod, mod.consts[name]
        target = mod.imports.get(name)
        if target and target[0] in self.modules and target[1] in self.modules[target[0]].consts:
            other = self.modules[target[0]]
            return other, other.consts[target[1]]
        return None

    def inline(self, expr: ast.expr, ctx: Ctx, depth: int = 0) -> str:
        if isinstance(expr, ast.Constant):
            return str(expr.value)
        if isinstance(expr, ast.JoinedStr):
            return "".join(
                str(v.value) if isinstance(v, ast.Constant) else self.inline(v.value, ctx, depth)
                for v in expr.values
            )
        if isinstance(expr, ast.BinOp) and _is_str(expr):
            return self.inline(expr.left, ctx, depth) + self.inline(expr.right, ctx, depth)
        joined = self._joined(expr, ctx)
        if joined is not None:
            return joined
        if isinstance(expr, ast.IfExp) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.strip()
            for e in (expr.body, expr.orelse)
        ):
            return f"<{expr.body.value.strip()}|{expr.orelse.value.strip()}>"
        if isinstance(expr, ast.Name):
            if expr.id in ctx.env:
                value = ctx.env[expr.id]
                return "None" if value is None else value
            local = expr.id in _params(ctx.func) or expr.id in _assigned(ctx.func)
            found = None if local else self.constant(ctx.mod, expr.id)
            if found and depth < 4 and self._is_text(found[1]):
                return self.inline(found[1], Ctx(found[0], None, ""), depth + 1)
        return placeholder(expr)

    def _joined(self, expr: ast.expr, ctx: Ctx) -> str | None:
        """``", ".join(NAMES)`` (or of ``sorted(NAMES)``) of a constant list of strings."""
        if not (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "join"
            and isinstance(expr.func.value, ast.Constant)
            and len(expr.args) == 1
        ):
            return None
        arg, order = expr.args[0], False
        if isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "sorted" and arg.args:
            arg, order = arg.args[0], True
        if not isinstance(arg, ast.Name) or arg.id in ctx.env or arg.id in _assigned(ctx.func):
            return None
        found = self.constant(ctx.mod, arg.id)
        if found is None or not isinstance(found[1], (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            return None
        elts = found[1].keys if isinstance(found[1], ast.Dict) else found[1].elts
        items = [e.value for e in elts if isinstance(e, ast.Constant)]
        if len(items) != len(elts) or not all(isinstance(i, str) for i in items):
            return None
        return expr.func.value.value.join(sorted(items) if order else items)

    @staticmethod
    def _is_text(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Constant):
            return isinstance(expr.value, (str, int, float))
        return isinstance(expr, (ast.JoinedStr, ast.Name)) or _is_str(expr)

    def top(self, expr: ast.expr | None, ctx: Ctx, depth: int = 0) -> list[str]:
        """The alternatives a message expression can take (branches, assignments, helpers)."""
        if expr is None:
            return []
        if depth > 4:
            return [self.inline(expr, ctx)]
        if isinstance(expr, ast.IfExp):
            return _unique(
                self.top(expr.body, ctx, depth + 1) + self.top(expr.orelse, ctx, depth + 1)
            )
        if isinstance(expr, ast.BoolOp) and isinstance(expr.op, ast.Or):
            for value in expr.values:
                if isinstance(value, ast.Name) and value.id in _params(ctx.func):
                    if ctx.env.get(value.id) is None:
                        continue
                return self.top(value, ctx, depth + 1)
        if isinstance(expr, ast.BinOp) and _is_str(expr):
            lefts, rights = (
                self.top(expr.left, ctx, depth + 1),
                self.top(expr.right, ctx, depth + 1),
            )
            if len(lefts) * len(rights) <= 8:
                return _unique([a + b for a in lefts for b in rights])
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod):
            if isinstance(expr.left, ast.Constant) and isinstance(expr.left.value, str):
                args = expr.right.elts if isinstance(expr.right, ast.Tuple) else [expr.right]
                return [self.percent(expr.left.value, args, ctx)]
        if isinstance(expr, ast.Name):
            return self._name(expr, ctx, depth)
        if isinstance(expr, ast.Call):
            return self._call(expr, ctx, depth)
        return [self.inline(expr, ctx)]

    def _name(self, expr: ast.Name, ctx: Ctx, depth: int) -> list[str]:
        if expr.id in ctx.env or ctx.func is None or expr.id in _params(ctx.func):
            return [self.inline(expr, ctx)]
        values, added, simple = [], [], True
        for node in _own_nodes(ctx.func):
            if (
                isinstance(node, ast.AugAssign)
                and isinstance(node.op, ast.Add)
                and getattr(node.target, "id", None) == expr.id
            ):
                added.append(self.inline(node.value, ctx))  # text += "..."
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id == expr.id:
                        values.append(node.value)
                    elif any(getattr(n, "id", None) == expr.id for n in ast.walk(target)):
                        simple = False
            elif isinstance(node, ast.For) and self._loop_values(node, expr.id, ctx) is not None:
                values.extend(self._loop_values(node, expr.id, ctx))
            elif isinstance(node, (ast.AugAssign, ast.For, ast.withitem, ast.NamedExpr)):
                target = getattr(node, "target", None) or getattr(node, "optional_vars", None)
                if target is not None and any(
                    getattr(n, "id", None) == expr.id for n in ast.walk(target)
                ):
                    simple = False
        if values and simple and len(added) <= 1:
            found = _unique([t for v in values for t in self.top(v, ctx, depth + 1)])
            return found + [t + a for t in found for a in added] if len(found) <= 4 else found
        return [self.inline(expr, ctx)]

    def _loop_values(self, loop: ast.For, name: str, ctx: Ctx) -> list[ast.expr] | None:
        """What ``for a, b in LITERAL_LIST`` binds ``name`` to, one per item; None when the
        loop does not bind it or its items are not written out in the function."""
        items = loop.iter
        if isinstance(items, ast.Name):
            bound = [
                n.value
                for n in _own_nodes(ctx.func)
                if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == items.id for t in n.targets)
            ]
            items = bound[0] if len(bound) == 1 else items
        if not isinstance(items, (ast.List, ast.Tuple)):
            return None
        target = loop.target
        if isinstance(target, ast.Name):
            return list(items.elts) if target.id == name else None
        names = [getattr(t, "id", None) for t in getattr(target, "elts", [])]
        if name not in names:
            return None
        index = names.index(name)
        rows = [e for e in items.elts if isinstance(e, ast.Tuple) and len(e.elts) == len(names)]
        return [row.elts[index] for row in rows] if len(rows) == len(items.elts) else None

    def _callback(self, expr: ast.Call, ctx: Ctx, depth: int) -> list[str] | None:
        """``self.attr(...)`` where ``__init__`` stored a parameter as ``self.attr``: the
        functions the class's constructions pass for it (lambdas or named functions)."""
        func = expr.func
        cls_name = ctx.qual.split(".")[0]
        init = next(
            (
                item
                for node in ctx.mod.tree.body
                if isinstance(node, ast.ClassDef) and node.name == cls_name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and item.name == "__init__"
            ),
            None,
        )
        if init is None:
            return None
        param = next(
            (
                n.value.id
                for n in _own_nodes(init)
                if isinstance(n, ast.Assign)
                and isinstance(n.value, ast.Name)
                and any(getattr(t, "attr", None) == func.attr for t in n.targets)
            ),
            None,
        )
        out = []
        for mod in self.modules.values():
            for node in ast.walk(mod.tree):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == cls_name):
                    continue
                given = _keyword(node, param)
                if isinstance(given, ast.Lambda):
                    names = [a.arg for a in given.args.args]
                    env = {n: self.inline(a, ctx) for n, a in zip(names, expr.args)}
                    out.extend(self.top(given.body, Ctx(mod, None, "", env), depth + 1))
        return _unique(sorted(out)) or None

    def _call(self, expr: ast.Call, ctx: Ctx, depth: int) -> list[str]:
        func = expr.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "format"
            and isinstance(func.value, ast.Constant)
        ):
            args = iter(expr.args)
            return [
                re.sub(
                    r"\{[^{}]*\}",
                    lambda m: self.inline(next(args, ast.Name(m.group(0)[1:-1] or "value")), ctx),
                    func.value.value,
                )
            ]
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "self":
            found = self._callback(expr, ctx, depth)
            if found:
                return found
        target = self.function(ctx.mod, func)
        if target is not None and depth < 3:
            mod, helper = target
            returns = [n.value for n in _own_nodes(helper) if isinstance(n, ast.Return) and n.value]
            if returns:
                inner = Ctx(mod, helper, helper.name, bind(helper, expr, self, ctx, mod))
                return _unique([t for r in returns for t in self.top(r, inner, depth + 1)])
        return [self.inline(expr, ctx)]

    def function(self, mod: Module, func: ast.expr) -> tuple[Module, ast.FunctionDef] | None:
        """The metcli function a call's callee names (a name defined or imported here)."""
        if not isinstance(func, ast.Name):
            return None
        if func.id in mod.imports:
            other, name = mod.imports[func.id]
            other_mod = self.modules.get(other)
            if other_mod and name in other_mod.funcs:
                return other_mod, other_mod.funcs[name]
            return None
        if func.id in mod.funcs:
            return mod, mod.funcs[func.id]
        return None

    def percent(self, text: str, args: list[ast.expr], ctx: Ctx) -> str:
        values = iter(args)
        return re.sub(
            r"%[-#0 +]*\d*(?:\.\d+)?[sdrifgex%]",
            lambda m: "%" if m.group(0) == "%%" else self.inline(next(values, ast.Name("?")), ctx),
            text,
        )


def bind(func: ast.FunctionDef, call: ast.Call, renderer: Renderer, ctx: Ctx, home: Module) -> dict:
    """Parameter -> the caller's argument as text (None where it is None or not given)."""
    a = func.args
    positional = [p.arg for p in [*a.posonlyargs, *a.args]]
    if positional and positional[0] in ("self", "cls") and isinstance(call.func, ast.Attribute):
        positional = positional[1:]
    env: dict[str, str | None] = {}
    defaults = dict(zip(reversed(positional), reversed(a.defaults)))
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    given = dict(zip(positional, call.args))
    given.update({k.arg: k.value for k in call.keywords if k.arg})
    for name in [*positional, *(p.arg for p in a.kwonlyargs)]:
        expr = given.get(name, defaults.get(name))
        if expr is None or (isinstance(expr, ast.Constant) and expr.value is None):
            env[name] = None
        else:
            env[name] = renderer.inline(expr, ctx if name in given else Ctx(home, None, ""))
    return env


def _is_str(expr: ast.expr) -> bool:
    """Whether ``expr`` is text: a string, an f-string, or a sum with text in it."""
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str)
    if isinstance(expr, ast.JoinedStr):
        return True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        numbers = [e for e in (expr.left, expr.right) if isinstance(e, ast.Constant)]
        if any(not isinstance(e.value, str) for e in numbers):
            return False
        return _is_str(expr.left) or _is_str(expr.right)
    return False


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _keyword(call: ast.Call, *names: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg in names), None)
