"""The shape of the library (issue 15): core at the bottom, each chapter's module importing only core and earlier
chapters' modules, no private names across modules, export cells short, every public parameter documented."""
import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'lipnotes'
NBS = ROOT / 'nbs'


def _chapters():
    "module name -> chapter number, from each notebook's default_exp."
    out = {}
    for nb in sorted(NBS.glob('[0-9][0-9]*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        for c in cells:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m: out[m.group(1)] = int(nb.name[:2])
    return out


CHAPTER = _chapters()
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def _imports(mod):
    "(imported lipnotes module, names) for every lipnotes import in `mod`'s source."
    tree = ast.parse((PKG / f'{mod}.py').read_text())
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            name = n.module or ''
            if n.level: name = name                                           # `from .x import y`
            elif name.startswith('lipnotes.'): name = name[len('lipnotes.'):]
            elif name == 'lipnotes': name = ''
            else: continue
            if name == '':                                                   # from lipnotes import x / from . import x
                out += [(a.name, []) for a in n.names]
            else: out.append((name, [a.name for a in n.names]))
        elif isinstance(n, ast.Import):
            out += [(a.name[len('lipnotes.'):], []) for a in n.names if a.name.startswith('lipnotes.')]
    return out


def test_every_module_comes_from_a_numbered_chapter():
    assert set(MODULES) <= set(CHAPTER), set(MODULES) - set(CHAPTER)
    assert CHAPTER['core'] == 0 and min(CHAPTER.values()) == 0


@pytest.mark.parametrize('mod', MODULES)
def test_imports_only_core_and_earlier_chapters_public_names(mod):
    for dep, names in _imports(mod):
        assert dep in CHAPTER, (mod, dep)
        assert CHAPTER[dep] < CHAPTER[mod], f"{mod} (chapter {CHAPTER[mod]}) imports {dep} (chapter {CHAPTER[dep]})"
        private = [n for n in names if n.startswith('_')]
        assert not private, f"{mod} imports private names {private} from {dep}"


def test_core_is_alone_at_the_bottom_and_there_are_no_cycles():
    graph = {m: {d for d, _ in _imports(m)} for m in MODULES}
    assert graph['core'] == set()
    assert all('core' in deps for m, deps in graph.items() if m != 'core' and deps), graph
    done, stack = set(), set()
    def visit(m):                                                            # depth-first search for a back edge
        assert m not in stack, f"import cycle through {m}"
        if m in done: return
        stack.add(m)
        for d in graph[m]: visit(d)
        stack.discard(m); done.add(m)
    for m in graph: visit(m)


@pytest.mark.parametrize('nb', sorted(p.name for p in NBS.glob('[0-9][0-9]*.ipynb')))
def test_export_cells_are_short(nb):
    cells = json.loads((NBS / nb).read_text())['cells']
    long = [(i, len(''.join(c['source']).splitlines())) for i, c in enumerate(cells)
            if c['cell_type'] == 'code' and re.match(r'#\|\s*export', ''.join(c['source']))
            and len(''.join(c['source']).splitlines()) > 30]
    assert not long, f"{nb}: export cells (index, lines) over 30 lines: {long}"


def _documented(obj):
    "The parameters of a public function or class (its __init__) that have no docments comment."
    from fastcore.docments import docments
    f = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and f is object.__init__: return []
    try: params = inspect.signature(f).parameters
    except (TypeError, ValueError): return []
    docs = docments(f, full=True)
    skip = {'self', 'cls'}
    return [p for p, v in params.items() if p not in skip and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
            and not (docs.get(p) or {}).get('docment')]


@pytest.mark.parametrize('mod', MODULES)
def test_every_public_parameter_is_documented(mod):
    m = importlib.import_module(f'lipnotes.{mod}')
    missing = {}
    for name in m.__all__:
        obj = getattr(m, name)
        if inspect.isclass(obj) and issubclass(obj, tuple): continue                  # NamedTuple results: fields
        if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue           # constants (layer kinds)
        if (bad := _documented(obj)): missing[name] = bad
    assert not missing, f"lipnotes.{mod}: parameters without a docments comment: {missing}"
