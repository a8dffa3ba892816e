"""Write docs/troubleshooting.md: every error message a user can meet, from the source.

Run from the repository root::

    .venv/bin/python docs/make_troubleshooting.py          # writes docs/troubleshooting.md
    .venv/bin/python docs/make_troubleshooting.py --check  # exits 1 when the page is stale

The source is read with :mod:`ast`; nothing of metcli is imported. A message is every
construction of a :class:`metcli.core.errors.MetcliError` subclass (``raise X(...)``, an
error a helper returns, one kept for later) in ``toolkit/`` and ``cli/``, and every
``click.UsageError``/``click.BadParameter`` of ``cli/``. f-strings keep their literal text and
show each value as ``<expr>``. An error built by a small helper from its parameters
(``return InputError(what, ...)``, ``raise UsageError(what, fix=fix)``) is shown once per
call of the helper, with the caller's arguments. Which commands can meet a message comes
from the import graph: the modules each ``cli/<command>.py`` reaches through its imports
(those inside functions included). A message without a ``fix=`` gets its advice from
``ADVICE`` in ``docs/troubleshooting_advice.py``, keyed by ``<module>:<function>:<first
words>``; ``tests/test_troubleshooting.py`` fails when a message has neither.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "troubleshooting.md"
CLICK_ERRORS = {"UsageError", "BadParameter"}
LOGGERS = {"log", "logger", "_log", "LOG"}
ANY, NONE = "Any command", "Library only (no command reaches it)"


def _load(name: str):
    """A module of docs/ by file (docs/ is not a package; this script may be imported)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_source = _load("troubleshooting_source")
Ctx, Module, Renderer = _source.Ctx, _source.Module, _source.Renderer
_keyword, _params, bind = _source._keyword, _source._params, _source.bind
error_classes, _class_parents = _source.error_classes, _source.class_parents


def exit_codes(modules: dict[str, Module], classes: set[str]) -> dict[str, str]:
    """Error class -> exit code, from the ``except`` clauses of ``run_command``."""
    common = modules["metcli.cli._common"]
    values = {}
    for node in common.tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            for name, value in zip(node.targets[0].elts, node.value.elts):
                values[name.id] = str(value.value)
    handlers = []
    for node in ast.walk(common.funcs["run_command"]):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            names = {getattr(t, "id", getattr(t, "attr", "")) for t in types}
            codes = sorted(
                {values[n.id] for n in ast.walk(node) if getattr(n, "id", "") in values}, key=int
            )
            handlers.append((names, " or ".join(codes)))
    parents = _class_parents(modules)
    result = {}
    for cls in classes:
        chain, todo = [], [cls]
        while todo:
            chain.append(todo.pop(0))
            todo.extend(parents.get(chain[-1], []))
        result[cls] = next((c for names, c in handlers if names & set(chain) and c), "1")
    return result


# ----------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class Site:
    module: str  # dotted name of the module the user's command runs it from
    where: str  # io/files.py:read_image
    line: int
    cls: str
    message: str
    fix: str
    resolved: bool  # the message has literal text (else: built at run time)
    origin: str = ""  # io/integrity.py:128, where the error is constructed

    @property
    def key(self) -> str:
        message = re.sub(r"^(Invalid value for '[^']*': )?(<path>: )?", "", self.message)
        words = re.sub(r"<[^<>]*>", "...", message).replace(":", " ").split()
        return f"{self.where}:{' '.join(words[:5])}"


class Collector:
    """Every error construction and warning of the source tree."""

    def __init__(self, modules: dict[str, Module]):
        self.modules = modules
        self.renderer = Renderer(modules)
        self.classes, self.own_init = error_classes(modules)
        self.sites: list[Site] = []
        self.warnings: list[Site] = []
        self._index: dict[str, list] = {}

    def run(self) -> Collector:
        for mod in self.modules.values():
            self._walk(mod, mod.tree, None, [], None, False)
        return self

    def _walk(self, mod, node, func, qual, cls_name, returned) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._walk(mod, child, child, [*qual, child.name], cls_name, False)
            elif isinstance(child, ast.ClassDef):
                self._walk(mod, child, func, [*qual, child.name], child.name, False)
            else:
                if isinstance(child, ast.Call):
                    ctx = Ctx(mod, func, ".".join(qual) or "<module>")
                    self._call(child, ctx, cls_name, isinstance(node, ast.Return))
                self._walk(mod, child, func, qual, cls_name, False)

    def error_class(self, mod: Module, func: ast.expr) -> str | None:
        if isinstance(func, ast.Name) and func.id in self.classes:
            known = func.id in mod.imports or any(
                isinstance(n, ast.ClassDef) and n.name == func.id for n in mod.tree.body
            )
            return func.id if known and func.id not in self.own_init else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "click" and func.attr in CLICK_ERRORS:
                return f"click.{func.attr}"
            if func.value.id in mod.imports and func.attr in self.classes:
                return func.attr if func.attr not in self.own_init else None
        return None

    def _call(self, call: ast.Call, ctx: Ctx, cls_name: str | None, returned: bool) -> None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "warning":
            if isinstance(func.value, ast.Name) and func.value.id in LOGGERS and call.args:
                self._warning(call, ctx)
            return
        cls = self.error_class(ctx.mod, func)
        if (
            cls is None
            and cls_name in self.own_init
            and ctx.func is self.own_init[cls_name]
            and isinstance(func, ast.Attribute)
            and func.attr == "__init__"
        ):
            cls = cls_name
        if cls is not None:
            self.sites.extend(self.expand(call, ctx, cls, returned))

    def _warning(self, call: ast.Call, ctx: Ctx) -> None:
        first = call.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            text = self.renderer.percent(first.value, call.args[1:], ctx)
        else:
            text = self.renderer.inline(first, ctx)
        where = f"{ctx.mod.key}:{ctx.qual}"
        self.warnings.append(Site(ctx.mod.name, where, call.lineno, "warning", text, "", True))

    def expand(self, call: ast.Call, ctx: Ctx, cls: str, returned: bool, depth=0) -> list[Site]:
        """The sites of one construction: per caller of a helper that builds it from its
        parameters, else one per alternative text."""
        what = call.args[0] if call.args else _keyword(call, "what", "message")
        fix = _keyword(call, "fix")
        params = set(_params(ctx.func)) - set(ctx.env)
        used = {getattr(n, "id", "") for e in (what, fix) if e is not None for n in ast.walk(e)}
        used &= params
        direct = any(isinstance(e, ast.Name) and e.id in params for e in (what, fix))
        if used and depth == 0 and (returned or direct) and ctx.func.name != "__init__":
            sites = []
            for mod, qual, caller, helper_call in self.callers(ctx):
                caller_ctx = Ctx(mod, caller, qual)
                env = bind(ctx.func, helper_call, self.renderer, caller_ctx, ctx.mod)
                inner = Ctx(ctx.mod, ctx.func, ctx.qual, env)
                for site in self.expand(call, inner, cls, returned, depth + 1):
                    where = f"{mod.key}:{qual}"
                    sites.append(Site(mod.name, where, helper_call.lineno, *_tail(site)))
            if sites:
                return sites
        messages = self.renderer.top(what, ctx) or [""]
        fixes = self.renderer.top(fix, ctx) if fix is not None else []
        fix_text = " / ".join(f for f in fixes if f != "None")
        path = _keyword(call, "path")
        prefix = "" if path is None or _is_none(path) else "<path>: "
        if cls == "click.BadParameter":
            hint = _keyword(call, "param_hint")
            prefix = f"Invalid value for '{self.renderer.inline(hint, ctx)}': " if hint else ""
        sites = []
        for message in messages:
            resolved = bool(re.search(r"[A-Za-z]{2}", re.sub(r"<[^<>]*>", "", message)))
            if not resolved:
                message = " ".join(ast.unparse(call).split())
            message = prefix + message if resolved else message
            where = f"{ctx.mod.key}:{ctx.qual}"
            sites.append(
                Site(
                    ctx.mod.name,
                    where,
                    call.lineno,
                    cls,
                    _clean(message),
                    fix_text,
                    resolved,
                    f"{ctx.mod.key}:{call.lineno}",
                )
            )
        return sites

    def callers(self, ctx: Ctx):
        """(module, qualname, function, call) of each call of the helper ``ctx.func``."""
        name, found = ctx.func.name, []
        for mod in self.modules.values():
            local = mod is ctx.mod
            aliases = {a for a, (m, n) in mod.imports.items() if m == ctx.mod.name and n == name}
            if local:
                aliases.add(name)
            if mod.name not in self._index:
                self._index[mod.name] = _calls(mod)
            for func_qual, func_node, call in self._index[mod.name]:
                callee = call.func
                hit = isinstance(callee, ast.Name) and callee.id in aliases
                hit = hit or (
                    local
                    and isinstance(callee, ast.Attribute)
                    and callee.attr == name
                    and getattr(callee.value, "id", "") in ("self", "cls")
                )
                if hit and call is not None:
                    found.append((mod, func_qual, func_node, call))
        return found


def _calls(mod: Module):
    """(qualname, function node, call) of every call in a module."""
    out = []

    def walk(node, func, qual):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, child, [*qual, child.name])
            elif isinstance(child, ast.ClassDef):
                walk(child, func, [*qual, child.name])
            else:
                if isinstance(child, ast.Call):
                    out.append((".".join(qual) or "<module>", func, child))
                walk(child, func, qual)

    walk(mod.tree, None, [])
    return out


def _is_none(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is None


def _tail(site: Site) -> tuple:
    return site.cls, site.message, site.fix, site.resolved, site.origin


def _clean(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


# ----------------------------------------------------------------------------- the page
def load_advice():
    """The hand-kept part: ``INTRO`` (the page's opening) and ``ADVICE`` (key -> text)."""
    return _load("troubleshooting_advice")


def has_fix(site: Site) -> bool:
    return bool(re.search(r"[A-Za-z]{2}", re.sub(r"<[^<>]*>", "", site.fix)))


@dataclass
class Catalogue:
    sites: list[Site]
    warnings: list[Site]
    faults: list[tuple[str, str, str]]
    reach: dict[str, set[str]]
    commands: list[str]
    exits: dict[str, str]
    advice: dict[str, str]
    classes: frozenset[str] = frozenset()  # MetcliError and its subclasses
    own_init: frozenset[str] = frozenset()  # those that build their own message

    def missing_advice(self) -> list[str]:
        """Keys of the messages that have neither a fix nor hand-kept advice."""
        return sorted({s.key for s in self.sites if not has_fix(s) and s.key not in self.advice})

    def stale_advice(self) -> list[str]:
        """Hand-kept keys that no message without a fix has any more."""
        used = {s.key for s in self.sites if not has_fix(s)}
        return sorted(set(self.advice) - used)

    def section(self, module: str) -> str:
        found = self.reach.get(module, set())
        if set(self.commands) <= found:
            return ANY
        if not found:
            return NONE
        return ", ".join(f"`{c}`" for c in sorted(found, key=self.commands.index))

    def section_order(self, title: str) -> tuple:
        if title == ANY:
            return (0, 0, "")
        if title == NONE:
            return (3, 0, "")
        names = title.count("`") // 2
        first = self.commands.index(title.split("`")[1])
        return (1 if names == 1 else 2, first if names == 1 else names, title)

    def rows(self) -> dict[str, list[tuple[str, str, str, str]]]:
        """Section -> rows (message, what to do, exit code, sources), sorted."""
        merged: dict[tuple, set[str]] = {}
        for site in self.sites:
            advice = site.fix if has_fix(site) else self.advice.get(site.key, "")
            if not has_fix(site) and advice:
                advice += " †"
            text = f"`{_code(site.message)}`"
            if not site.resolved:
                text += " (built at run time)"
            row = (self.section(site.module), text, _prose(advice), self.exits.get(site.cls, "1"))
            merged.setdefault(row, set()).add(f"`{site.where}`")
        out: dict[str, list] = {}
        for (title, *row), sources in merged.items():
            out.setdefault(title, []).append((*row, "<br>".join(sorted(sources))))
        return {t: sorted(out[t], key=_row_order) for t in sorted(out, key=self.section_order)}

    def markdown(self, intro: str) -> str:
        lines = [intro.strip(), ""]
        n_fix = sum(has_fix(s) for s in self.sites)
        lines += [
            "## Errors by command",
            "",
            f"{len(self.sites)} messages from the source: {n_fix} carry their own fix, the "
            'others (marked †) get advice kept by hand. "Any command" lists the messages '
            "every command can print; a section that names several commands lists the "
            "messages those commands share.",
            "",
        ]
        for title, rows in self.rows().items():
            lines += [
                f"### {title}",
                "",
                "| message | what to do | exit | source |",
                "|---|---|---|---|",
            ]
            lines += [f"| {m} | {a} | {e} | {s} |" for m, a, e, s in rows]
            lines.append("")
        lines += ["## Operating-system faults while writing outputs", "", FAULTS_TEXT, ""]
        lines += ["| cause (errno) | message | what to do |", "|---|---|---|"]
        lines += [f"| {e} | `<path>: {_code(w)}` | {_prose(f)} |" for e, w, f in self.faults]
        lines += ["", "## Warnings", "", WARNINGS_TEXT, "", "| warning | commands | source |"]
        lines.append("|---|---|---|")
        merged: dict[tuple, set[str]] = {}
        for w in self.warnings:
            merged.setdefault((f"`{_code(w.message)}`", self.section(w.module)), set()).add(w.where)
        for (message, title), where in sorted(merged.items(), key=lambda i: (i[0][0].lower(), i)):
            sources = "<br>".join(f"`{s}`" for s in sorted(where))
            lines.append(f"| {message} | {title.replace(ANY, 'any')} | {sources} |")
        return "\n".join(lines).rstrip() + "\n"


FAULTS_TEXT = (
    "A full disk, a quota, a file-size limit, a read-only file system or a folder without "
    "write permission gives one of these lines, with the output folder as `<path>` "
    "(from `toolkit/io/oserrors.py`; exit 1, or 3 when other participants finished):"
)
WARNINGS_TEXT = (
    "Warnings are printed on stderr and the command goes on; `-q` hides them. Each is "
    "listed with the commands that can print it."
)


def os_faults(modules: dict[str, Module], renderer: Renderer) -> list[tuple[str, str, str]]:
    mod = modules["metcli.io.oserrors"]
    table = mod.consts.get("_FAULTS")
    rows = []
    for key, value in zip(table.keys, table.values):
        ctx = Ctx(mod, None, "")
        what, fix = (renderer.inline(v, ctx) for v in value.elts)
        rows.append((ast.unparse(key).replace("errno.", ""), what, fix))
    return sorted(rows)


def _row_order(row: tuple) -> tuple:
    """Rows by their message's words: a leading ``<path>: `` and placeholders' brackets
    left out."""
    text = row[0].strip("`").removeprefix("<path>: ")
    return (re.sub(r"[^a-z0-9 ]", "", text.lower()).strip(), row)


def _code(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _prose(text: str) -> str:
    """Advice as Markdown: its code spans kept, ``<placeholders>`` made code spans, the
    characters Markdown would read escaped."""
    parts = text.split("`")
    for i in range(1, len(parts), 2):
        parts[i] = "`" + parts[i].replace("|", "\\|") + "`"
    for i in range(0, len(parts), 2):
        out, k, plain = [], 0, parts[i]
        while k < len(plain):
            end = _closing(plain, k) if plain[k] == "<" else None
            if end is not None:
                out.append("`" + plain[k : end + 1].replace("|", "\\|") + "`")
                k = end + 1
                continue
            out.append("\\" + plain[k] if plain[k] in "\\<>*|" else plain[k])
            k += 1
        parts[i] = "".join(out)
    return "".join(parts)


def _closing(text: str, start: int) -> int | None:
    """The index of the ``>`` that closes the ``<`` at ``start`` (nested pairs allowed)."""
    depth = 0
    for k in range(start, len(text)):
        depth += {"<": 1, ">": -1}.get(text[k], 0)
        if depth == 0:
            return k
    return None


def build() -> Catalogue:
    modules = _source.load_modules()
    collector = Collector(modules).run()
    advice = load_advice()
    return Catalogue(
        sites=sorted(set(collector.sites), key=lambda s: (s.where, s.line, s.message)),
        warnings=collector.warnings,
        faults=os_faults(modules, collector.renderer),
        reach=_source.reach(modules),
        commands=list(_source.commands(modules)),
        exits={
            **exit_codes(modules, collector.classes),
            **dict.fromkeys((f"click.{c}" for c in CLICK_ERRORS), "2"),
        },
        advice=advice.ADVICE,
        classes=frozenset(collector.classes),
        own_init=frozenset(collector.own_init),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    catalogue = build()
    text = catalogue.markdown(load_advice().INTRO)
    for key in catalogue.missing_advice():
        print(f"no fix and no advice: {key}", file=sys.stderr)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is stale: run python docs/make_troubleshooting.py", file=sys.stderr
            )
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
