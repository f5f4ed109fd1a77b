"""Render lipnotes' documentation site (and README.md) from the notebooks without Quarto.

nbdev-docs needs Quarto, which many machines (these included) cannot install. This renders the same input, the notebooks
as `nbdev-proc-nbs` processes them into `_proc/` (frontmatter in a raw cell, show_doc cells executed, export cells dropped,
cell options such as `#| echo: false` and `#| output: asis` added), into one HTML page per notebook with pandoc: math as
MathML (no JavaScript, no network), code highlighted by pandoc, figures embedded as PNG data, a sidebar from
`nbs/sidebar.yml` with offline search (MiniSearch, vendored in tools/vendor/minisearch), a per-page table of contents,
previous/next links, parameter tables in API entries (from the docments), source pages with line anchors, each chapter's
notebook to download, a Markdown copy of each page and an `llms.txt` (the nbdev 3 convention) listing chapters and API.

    python tools/render_docs.py            # nbdev-proc-nbs, then the site into docs/ (pyproject's doc_path)
    python tools/render_docs.py --readme   # README.md from nbs/index.ipynb
"""
import argparse, base64, functools, hashlib, html, importlib, inspect, json, os, re, shutil, subprocess, sys, tomllib
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pypandoc
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / 'tools' / 'vendor' / 'minisearch'
MINISEARCH_SHA256 = '03c27931eb603af1d3358579e9885eafdb6a2f5fa9929557b3e77d7e99d06d03'
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
OPTION = re.compile(r'^#\|\s*([\w-]+)\s*:\s*(.*)$')
CURRENT = ' class="current"'
MATH_FAILURE = re.compile(r'Could not convert TeX math|Could not render TeX math', re.I)
# show_doc's markdown: a rule, the [source](/blob/<branch>/lipnotes/<module>.py#L<n>) link, `### name`, the signature
SHOW_DOC = re.compile(r'\[source\]\(/blob/[\w.-]+/(lipnotes/(\w+)\.py)#L(\d+)\)[^\n]*\n+###\s+(\w+)')


def html_name(nb_name):
    "The page a notebook becomes: the numeric prefix dropped, as nbdev does (02_frobenius.ipynb -> frobenius.html)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(nb_name).stem.lower()) + '.html'


def split_options(source):
    "Quarto cell options (`#| key: value` lines at the top of a cell) and the remaining code."
    opts, lines = {}, source.splitlines()
    i = 0
    while i < len(lines) and (lines[i].startswith('#|') or not lines[i].strip()):
        m = OPTION.match(lines[i])
        if m: opts[m.group(1)] = yaml.safe_load(m.group(2)) if m.group(2).strip() else True
        i += 1
    return opts, '\n'.join(lines[i:]).strip('\n')


def fence(text, lang=''):
    "A fenced code block that survives backticks inside `text`."
    ticks = '`' * max(3, max((len(r) + 1 for r in re.findall(r'`+', text)), default=0))
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}'


# ---------------------------------------------------------------------------------------------------------------- API
def api_object(module, name):
    "The documented object `lipnotes.<module>.<name>`, or None where it cannot be imported."
    try: return getattr(importlib.import_module(f'lipnotes.{module}'), name)
    except (ImportError, AttributeError): return None


@functools.lru_cache(maxsize=None)
def public_path(dotted):
    """A dotted name as a reader writes it: builtins, typing and lipnotes names bare (`int`, `Optional`, `PowerMethod`),
    others by the shortest module path that exports the same object (torch.nn.modules.module.Module -> torch.nn.Module);
    unchanged where it names no importable object."""
    parts = dotted.split('.')
    if parts[0] in ('builtins', 'typing', '__main__', 'lipnotes'): return parts[-1]
    obj = None
    for i in range(len(parts) - 1, 0, -1):          # the longest importable module prefix, then attributes
        try: obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError: continue
        for a in parts[i:]: obj = getattr(obj, a, None)
        break
    if obj is None: return dotted
    for i in range(1, len(parts) - 1):
        try:
            if getattr(importlib.import_module('.'.join(parts[:i])), parts[-1], None) is obj:
                return '.'.join(parts[:i] + parts[-1:])
        except ImportError: continue
    return dotted


def public_paths(text):
    "Every dotted name in `text` (an annotation, a signature) by `public_path`."
    return re.sub(r'(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+', lambda m: public_path(m.group(0)), text)


def type_name(anno):
    "An annotation as a reader writes it: `int`, `torch.Tensor | None`, `Optional[Callable]`, `torch.nn.Module`."
    if anno is inspect.Parameter.empty: return ''
    if isinstance(anno, str): return anno
    if isinstance(anno, type) and not getattr(anno, '__args__', None):
        return public_path(f'{anno.__module__}.{anno.__qualname__}')
    return public_paths(str(anno))


def is_namedtuple(obj):
    return isinstance(obj, type) and hasattr(obj, '_fields')


def own_new(cls):
    "Whether a NamedTuple defines its own __new__ (namedtuple's generated one has no source file)."
    try: return bool(inspect.getsource(cls.__new__))
    except (OSError, TypeError): return False


def namedtuple_fields(cls):
    "[(field, annotation, default, comment)] of a NamedTuple, the comments read from its source lines."
    try: src = inspect.getsource(cls)
    except (OSError, TypeError): src = ''
    rows = []
    for f in cls._fields:
        m = re.search(rf'^\s+{f}\s*:\s*[^#\n=]+?(?:=\s*[^#\n]+?)?\s*(?:#\s*(.*))?$', src, re.M)
        rows.append((f, type_name(cls.__annotations__.get(f, inspect.Parameter.empty)),
                     repr(cls._field_defaults[f]) if f in cls._field_defaults else '', (m.group(1) or '') if m else ''))
    return rows


def star_comment(fn, name):
    "The comment after a `*name` / `**name` parameter in `fn`'s source (docments reads none there); '' if none."
    try: src = inspect.getsource(fn)
    except (OSError, TypeError): return ''
    m = re.search(rf'\*{{1,2}}{name}\b[^#\n]*#\s*(.*)$', src, re.M)
    return m.group(1).strip() if m else ''


def parameter_rows(obj):
    """[(name, type, default, details)] of a function's or class's parameters: names, types (as annotated: blank where
    none) and defaults from inspect.signature, details from the docments; a documented *args / **kwargs included;
    a last row '**Returns**' where the return is annotated or documented. [] where there are no parameters."""
    from fastcore.docments import docments
    if is_namedtuple(obj):     # its fields; or the parameters of a __new__ it defines itself (which checks them)
        if not own_new(obj): return namedtuple_fields(obj)
        obj = obj.__new__
    try: sig, dm = inspect.signature(obj), docments(obj, full=True, returns=True)
    except (TypeError, ValueError, OSError): return []
    fn = obj.__init__ if isinstance(obj, type) else obj
    rows = []
    for name, p in sig.parameters.items():
        if name in ('self', 'cls'): continue
        doc = (dm.get(name) or {}).get('docment') or ''
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            doc = doc or star_comment(fn, name)
            if not doc: continue
            name = ('*' if p.kind is p.VAR_POSITIONAL else '**') + name
        default = '' if p.default is p.empty else repr(p.default)
        rows.append((name, type_name(p.annotation), default, doc))
    ret = (dm.get('return') or {}).get('docment') or ''
    if rows and (sig.return_annotation is not sig.empty or ret):
        rows.append(('**Returns**', type_name(sig.return_annotation), '', ret))
    return rows


def inline(text):
    "Escaped text with `code` spans as <code>."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(text, quote=False))


def parameter_table(obj):
    "An HTML table of the parameters (or NamedTuple fields) of `obj`; '' where it has none."
    rows = parameter_rows(obj)
    if not rows: return ''
    head = 'Field' if is_namedtuple(obj) else 'Parameter'
    body = '\n'.join(
        f'<tr><td>{"<em>returns</em>" if n == "**Returns**" else f"<code>{html.escape(n)}</code>"}</td>'
        f'<td>{f"<code>{html.escape(t)}</code>" if t else ""}</td><td>{f"<code>{html.escape(d)}</code>" if d else ""}</td>'
        f'<td>{inline(x)}</td></tr>' for n, t, d, x in rows)
    return (f'<table class="params"><thead><tr><th>{head}</th><th>Type</th><th>Default</th><th>Details</th></tr></thead>\n'
            f'<tbody>\n{body}\n</tbody></table>')


def api_markdown(md):
    """show_doc's markdown with a parameter table after the signature, a NamedTuple's fields as its signature, and the
    source link pointing at the exported module's source page (source/<module>.py.html#L-<line>)."""
    m = SHOW_DOC.search(md)
    if not m: return md
    _, module, _, name = m.groups()
    obj = api_object(module, name)
    md = re.sub(r'\(/blob/[\w.-]+/lipnotes/(\w+)\.py#L(\d+)\)', r'(source/\1.py.html#L-\2)', md)
    md = md.replace('__main__.', '')
    md = re.sub(r'```python\n.*?\n```', lambda f: public_paths(f.group(0)), md, count=1, flags=re.S)
    if obj is None: return md
    if is_namedtuple(obj) and not own_new(obj):      # NamedTuple: show the fields, not (*args, **kwargs)
        sig = f'class {name}(NamedTuple):\n' + '\n'.join(f'    {f}: {t}' for f, t, _, _ in namedtuple_fields(obj))
        md = re.sub(r'```python\n.*?\n```', lambda _: fence(sig, 'python'), md, count=1, flags=re.S)
    table = parameter_table(obj)
    return md + '\n\n' + table if table else md


# ------------------------------------------------------------------------------------------------------- notebooks
def output_markdown(out):
    "Markdown (with raw HTML where needed) for one cell output."
    kind = out['output_type']
    if kind == 'stream': return fence(ANSI.sub('', ''.join(out['text'])), 'text')
    if kind == 'error': return fence(ANSI.sub('', '\n'.join(out['traceback'])), 'text')
    data = out.get('data', {})
    for mime in ('image/png', 'image/jpeg', 'image/svg+xml'):
        if mime not in data: continue
        raw = ''.join(data[mime])
        b64 = base64.b64encode(raw.encode()).decode() if mime == 'image/svg+xml' else raw.replace('\n', '')
        base64.b64decode(b64, validate=True)
        return f'<figure class="cell-figure"><img src="data:{mime};base64,{b64}" alt="figure"></figure>'
    if 'text/markdown' in data:
        return api_markdown(''.join(data['text/markdown']))
    if 'text/html' in data: return ''.join(data['text/html'])
    if 'text/plain' in data: return fence(''.join(data['text/plain']), 'text')
    return ''


def merge_streams(outputs):
    "Consecutive stream outputs of the same name as one (a loop that prints line by line makes many)."
    merged = []
    for o in outputs:
        if merged and o['output_type'] == 'stream' and merged[-1]['output_type'] == 'stream' and merged[-1]['name'] == o['name']:
            merged[-1] = {**merged[-1], 'text': ''.join(merged[-1]['text']) + ''.join(o['text'])}
        else: merged.append(o)
    return merged


def notebook_markdown(nb):
    "(frontmatter, markdown body) of a processed notebook, honouring the cell options nbdev and Quarto use."
    meta, parts = {}, []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'raw':
            m = re.match(r'^---\n(.*?)\n---', src, re.S)
            if m: meta.update(yaml.safe_load(m.group(1)) or {})
            continue
        if cell['cell_type'] == 'markdown':
            parts.append(src); continue
        opts, code = split_options(src)
        if opts.get('include') is False: continue
        if opts.get('echo', True) is not False and code:
            block = fence(code, 'python')
            if opts.get('code-fold'):
                summary = html.escape(str(opts.get('code-summary', 'Code')))
                block = f'<details class="code-fold"><summary>{summary}</summary>\n\n{block}\n\n</details>'
            parts.append(block)
        if opts.get('output', True) is False: continue
        parts += [md for o in merge_streams(cell.get('outputs', [])) if (md := output_markdown(o))]
    return meta, '\n\n'.join(parts)


def pandoc(markdown, *args):
    proc = subprocess.run([pypandoc.get_pandoc_path(), '--from', 'markdown', '--to', 'html5', '--mathml', '--wrap=none',
                           *args], input=markdown, capture_output=True, text=True)
    if proc.returncode or MATH_FAILURE.search(proc.stderr):
        raise SystemExit(f'render_docs: pandoc failed:\n{proc.stderr}')
    return proc.stdout


def to_html(markdown):
    "pandoc markdown -> HTML5 fragment, math as MathML, code highlighted; fails on math pandoc cannot convert."
    kept = []       # embedded figures (pandoc is slow on long base64) and parameter tables (finished HTML) bypass pandoc
    def stash(m): kept.append(m.group(0)); return f'data:stash/{len(kept) - 1}'
    def stash_table(m): kept.append(m.group(0)); return f'<!--stash:{len(kept) - 1}-->'
    markdown = re.sub(r'data:image/[\w.+-]+;base64,[A-Za-z0-9+/=]+', stash, markdown)
    out = pandoc(re.sub(r'<table class="params">.*?</table>', stash_table, markdown, flags=re.S))
    out = re.sub(r'data:stash/(\d+)|<!--stash:(\d+)-->', lambda m: kept[int(m.group(1) or m.group(2))], out)
    # nbdev writes site-absolute links (/power_iteration.html#...); make them relative so the site works from any folder
    return re.sub(r'href="/([\w.-]+\.html)', r'href="\1', out)


def highlight_css():
    "pandoc's CSS for its highlighted code (the pygments style), taken from a standalone page it writes."
    page = pandoc('```python\nx = 1\n```', '--standalone', '--metadata', 'title=x')
    style = re.search(r'<style>(.*?)</style>', page, re.S).group(1)
    start = style.index('pre > code.sourceCode')
    end = style.rindex('code span.')
    end = style.index('\n', end)
    css = style[start:end]
    assert css.count('{') == css.count('}'), 'render_docs: unbalanced highlighting CSS from pandoc'
    return css


# --------------------------------------------------------------------------------------------- sections and search
class _Text(HTMLParser):
    "Visible prose of an HTML fragment, math as its TeX; code blocks, figures, scripts and table headers left out."
    SKIP = {'pre', 'math', 'script', 'style', 'figure', 'thead'}
    BLOCK = {'p', 'td', 'th', 'tr', 'li', 'div', 'dd', 'dt', 'h2', 'h3', 'h4', 'blockquote'}

    def __init__(self):
        super().__init__(); self.depth, self.tex, self.parts = 0, False, []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP: self.depth += 1
        self.tex = self.tex or tag == 'annotation'

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth: self.depth -= 1
        if tag == 'annotation': self.tex = False
        if tag in self.BLOCK: self.parts.append(' ')      # table cells, items and paragraphs do not run together

    def handle_data(self, data):
        if not self.depth or self.tex: self.parts.append(data)


def text_of(fragment):
    p = _Text(); p.feed(fragment); p.close()
    return re.sub(r'\s+', ' ', ''.join(p.parts)).strip()


HEADING = re.compile(r'<h([23]) id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)


def sections(body):
    "[(level, id, heading html, fragment up to the next h2/h3)] of a page body; level 1 for the text above the first."
    marks = list(HEADING.finditer(body))
    out = [(1, '', '', body[:marks[0].start()] if marks else body)]
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        out.append((int(m.group(1)), m.group(2), m.group(3), body[m.end():end]))
    return out


def heading_html(inner):
    "A heading's inner HTML for the contents panel: links unwrapped (pandoc and show_doc headings hold none today)."
    return re.sub(r'</?a\b[^>]*>', '', inner).strip()


def toc_html(secs, inline=False):
    """The contents panel: the page's h2 sections with their h3 entries nested; beside the text (#toc), or, for narrow
    windows, folded at the top of it (inline=True)."""
    items, open_sub = [], False
    for level, ident, inner, _ in secs:
        if level == 1: continue
        link = f'<a href="#{ident}">{heading_html(inner)}</a>'
        if level == 2:
            if open_sub: items.append('</ul></li>'); open_sub = False
            items.append(f'<li>{link}')
            items.append('<ul>'); open_sub = True
        else:
            if not open_sub: items.append('<li><ul>'); open_sub = True
            items.append(f'<li class="api">{link}</li>' if re.fullmatch(r'[\w.]+', text_of(inner)) else f'<li>{link}</li>')
    if open_sub: items.append('</ul></li>')
    html_ = '\n'.join(items).replace('<ul>\n</ul>', '')
    if inline: return f'<details class="toc-inline"><summary>On this page</summary><ul>\n{html_}\n</ul></details>' if items else ''
    return f'<nav class="toc" id="toc" aria-label="On this page"><h2>On this page</h2><ul>\n{html_}\n</ul></nav>'


def search_documents(page, chapter, desc, secs):
    "One search document per section (its heading, the API names it documents, its prose), and one for the page."
    docs = []
    for level, ident, inner, frag in secs:
        title = text_of(inner) if level > 1 else chapter
        if level == 1: frag = f'<p>{html.escape(desc)}</p>' + frag       # the chapter: its title and description
        api = title if level == 3 and re.fullmatch(r'\w+', title) else ''
        text = text_of(frag)
        if not (text or api): continue
        docs.append({'id': f'{page}#{ident}' if ident else page, 'page': page, 'anchor': ident, 'chapter': chapter,
                     'title': title, 'api': api, 'text': text})
    return docs


# ------------------------------------------------------------------------------------------------------------ site
STYLE = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.55;color:#222}
.layout{display:flex;min-height:100vh}
nav.sidebar{flex:0 0 16rem;background:#f5f6f8;border-right:1px solid #ddd;padding:1.2rem 1rem;
  position:sticky;top:0;height:100vh;box-sizing:border-box;overflow-y:auto}
nav.sidebar .site{font-weight:700;font-size:1.2rem;display:block;margin-bottom:.8rem;color:#222;text-decoration:none}
nav.sidebar ul.chapters{list-style:none;padding:0;margin:0} nav.sidebar ul.chapters li{margin:.35rem 0}
nav.sidebar a{color:#1a5fb4;text-decoration:none} nav.sidebar a.current{font-weight:700;color:#222}
.search{margin-bottom:1rem;position:relative}
.search input{width:100%;box-sizing:border-box;padding:.35rem .5rem;border:1px solid #bbb;border-radius:4px;font-size:.95rem}
#search-results{list-style:none;padding:0;margin:.3rem 0 0;background:#fff;border:1px solid #ddd;border-radius:4px;
  max-height:60vh;overflow-y:auto} #search-results:empty{display:none}
#search-results li{padding:.35rem .5rem;border-bottom:1px solid #eee;font-size:.85rem}
#search-results li a{display:block} #search-results .where{color:#666;font-size:.78rem} #search-results .snippet{color:#444}
#search-results li.none{color:#666}
main{flex:1;min-width:0;max-width:60rem;padding:1.5rem 2.5rem 4rem}
nav.toc{flex:0 0 15rem;padding:1.5rem 1rem;position:sticky;top:0;height:100vh;box-sizing:border-box;overflow-y:auto;
  font-size:.85rem;border-left:1px solid #eee}
nav.toc h2{font-size:.95rem;margin:0 0 .5rem} nav.toc ul{list-style:none;padding-left:0;margin:0}
nav.toc ul ul{padding-left:.9rem} nav.toc li{margin:.2rem 0} nav.toc a{color:#1a5fb4;text-decoration:none}
nav.toc li.api a{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem}
details.toc-inline{display:none;font-size:.9rem;margin:.5rem 0 1rem} details.toc-inline summary{cursor:pointer}
details.toc-inline ul{list-style:none;padding-left:1rem} details.toc-inline a{color:#1a5fb4;text-decoration:none}
@media (max-width:70rem){nav.toc{display:none} details.toc-inline{display:block}}
@media (max-width:48rem){.layout{display:block} nav.sidebar{position:static;height:auto;border-right:0;
  border-bottom:1px solid #ddd} main{padding:1rem}}
h1.title{margin-bottom:.2rem} p.description{font-size:1.1rem;color:#555;margin-top:0}
p.open-chapter{font-size:.9rem;color:#444;background:#f3f7fb;border-left:3px solid #1a5fb4;padding:.4rem .7rem}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:.6rem .8rem;overflow-x:auto;font-size:.85rem}
code{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
figure.cell-figure{margin:1rem 0} figure.cell-figure img{max-width:100%}
table{border-collapse:collapse;display:block;max-width:100%;overflow-x:auto} th,td{border:1px solid #ccc;padding:.25rem .6rem}
main math{max-width:100%;overflow-x:auto} main p,main li{overflow-wrap:break-word}
table.params{font-size:.85rem;margin:.6rem 0 1.2rem} table.params th{background:#f5f6f8;text-align:left}
details.code-fold summary{cursor:pointer;color:#555}
math[display="block"]{margin:.8rem 0;overflow-x:auto;overflow-y:hidden;padding:.2rem 0}
nav.pager{display:flex;justify-content:space-between;gap:1rem;margin-top:3rem;padding-top:1rem;border-top:1px solid #ddd}
nav.pager a{color:#1a5fb4;text-decoration:none} nav.pager .next{margin-left:auto;text-align:right}
pre.numberSource code > span > a:first-child::before{color:#999}
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site}</title><link rel="stylesheet" href="site.css">
<script src="minisearch.js" defer></script><script src="search-data.js" defer></script><script src="search.js" defer></script>
</head>
<body><div class="layout">
<nav class="sidebar"><a class="site" href="index.html">{site}</a>
<div class="search" role="search"><input id="search" type="search" placeholder="Search the book" aria-label="Search the book"
 autocomplete="off"><ul id="search-results" aria-live="polite"></ul></div>
<ul class="chapters">
{links}
</ul></nav>
<main><h1 class="title">{title}</h1>
{description}
{open_line}
{body}
{pager}
</main>
{toc}
</div></body></html>
"""

SEARCH_JS = r"""// Offline search over every section of the book: MiniSearch (vendored, tools/vendor/minisearch) indexes the
// documents of search-data.js at the first keystroke; nothing is fetched, so it works from file:// and any static server.
(function () {
  const input = document.getElementById('search'), list = document.getElementById('search-results');
  const SPLIT = /[\n\r\p{Z}\p{P}]+/u;     // MiniSearch's own separators
  const CJK = /[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+/gu;
  // Chinese, Japanese and Korean are written without spaces: index each run of them by its overlapping character pairs
  // (a single character alone), so that any word inside a run is found
  function tokenize(text) {
    const out = [];
    for (const t of text.split(SPLIT)) {
      if (!t) continue;
      for (const w of t.replace(CJK, ' ').split(' ')) if (w) out.push(w);
      for (const run of t.match(CJK) || []) {
        if (run.length === 1) out.push(run);
        for (let i = 0; i + 1 < run.length; i++) out.push(run.slice(i, i + 2));
      }
    }
    return out;
  }
  let index = null;
  const docs = {};
  function build() {
    index = new MiniSearch({fields: ['title', 'api', 'chapter', 'text'], storeFields: ['page', 'anchor', 'chapter', 'title'],
      tokenize: tokenize,
      searchOptions: {boost: {api: 3, title: 3, chapter: 1.5}, prefix: t => t.length > 1,
                      fuzzy: t => t.length > 5 ? 0.2 : false, combineWith: 'AND', tokenize: tokenize}});
    for (const d of window.LIPNOTES_SEARCH) docs[d.id] = d;
    index.addAll(window.LIPNOTES_SEARCH);
  }
  function esc(s) { return s.replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c])); }
  function snippet(text, terms) {
    const low = text.toLowerCase();
    let at = -1;
    for (const t of terms) { at = low.indexOf(t.toLowerCase()); if (at >= 0) break; }
    const start = Math.max(0, at - 60), s = text.slice(start, start + 180);
    return (start > 0 ? '…' : '') + esc(s) + (start + 180 < text.length ? '…' : '');
  }
  function show() {
    const q = input.value.trim();
    if (!q) { list.innerHTML = ''; return; }
    if (!index) build();
    const exact = h => h.title.toLowerCase() === q.toLowerCase() ? 0 : 1;    // a heading typed in full comes first
    const hits = index.search(q).map((h, i) => [exact(h), i, h]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map(x => x[2]).slice(0, 12);
    list.innerHTML = hits.length ? hits.map(h => {
      const href = h.page + (h.anchor ? '#' + h.anchor : '');
      return '<li><a href="' + esc(href) + '"><span class="title">' + esc(h.title) + '</span>' +
        '<div class="where">' + esc(h.chapter) + '</div><div class="snippet">' + snippet(docs[h.id].text, h.terms) +
        '</div></a></li>';
    }).join('') : '<li class="none">No match for “' + esc(q) + '”</li>';
  }
  function clear() { input.value = ''; list.innerHTML = ''; }
  input.addEventListener('input', show);
  input.addEventListener('keydown', e => {
    const first = list.querySelector('a');
    if (e.key === 'Enter' && first) { e.preventDefault(); first.click(); }
    if (e.key === 'ArrowDown' && first) { e.preventDefault(); first.focus(); }
    if (e.key === 'Escape') clear();
  });
  list.addEventListener('keydown', e => {
    const links = [...list.querySelectorAll('a')], i = links.indexOf(document.activeElement);
    if (e.key === 'ArrowDown' && i + 1 < links.length) { e.preventDefault(); links[i + 1].focus(); }
    if (e.key === 'ArrowUp') { e.preventDefault(); (i > 0 ? links[i - 1] : input).focus(); }
    if (e.key === 'Escape') { clear(); input.focus(); }
  });
  window.addEventListener('hashchange', () => { list.innerHTML = ''; });
})();
"""


def config():
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['nbdev']


def sidebar_notebooks():
    "Notebook file names in sidebar order (nbs/sidebar.yml)."
    side = yaml.safe_load((ROOT / 'nbs' / 'sidebar.yml').read_text())
    def flatten(items):
        for it in items:
            if isinstance(it, str): yield it
            elif isinstance(it, dict): yield from flatten(it.get('contents', []))
    return list(flatten(side['website']['sidebar']['contents']))


def proc_notebooks():
    "Run nbdev-proc-nbs and return the processed notebooks' folder."
    subprocess.run([str(Path(sys.executable).parent / 'nbdev-proc-nbs')], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ROOT / '_proc'


def minisearch_js():
    js = (VENDOR / 'minisearch.js').read_bytes()
    if hashlib.sha256(js).hexdigest() != MINISEARCH_SHA256:
        raise SystemExit('render_docs: tools/vendor/minisearch/minisearch.js is not the vendored MiniSearch 7.2.0 '
                         '(sha256 differs): run `make vendor`')
    licence = (VENDOR / 'LICENSE.txt').read_text().strip()
    return f'/*! MiniSearch 7.2.0 (npm: minisearch), MIT licence:\n{licence}\n*/\n'.encode() + js


def source_page(module_path):
    "An HTML page of an exported module's source, highlighted, each line with an anchor #L-<n> (as show_doc links)."
    code = module_path.read_text()
    ticks = '`' * max(3, max((len(r) + 1 for r in re.findall(r'`+', code)), default=0))
    body = pandoc(f'{ticks}{{#L .python .numberLines}}\n{code.rstrip()}\n{ticks}')
    nb = re.search(r'# AUTOGENERATED! DO NOT EDIT! File to edit: (\S+?\.ipynb)', code)
    origin = f' (generated from <a href="../notebooks/{Path(nb.group(1)).name}">{html.escape(nb.group(1))}</a>)' if nb else ''
    name = f'lipnotes/{module_path.name}'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
            f'<link rel="stylesheet" href="../site.css"></head><body><main class="source"><h1 class="title">'
            f'<code>{name}</code></h1><p class="description">The exported module{origin}; '
            f'<a href="../index.html">back to the book</a>.</p>\n{body}</main></body></html>\n')


def page_markdown(title, desc, md):
    "The page as Markdown for readers that want text (llms.txt links here): math as TeX, figures named, no HTML figures."
    md = re.sub(r'<figure class="cell-figure"><img src="data:image/[^"]+" alt="figure"></figure>', '[figure]', md)
    md = re.sub(r'\(/?([\w.-]+)\.html(#[^)\s]*)?\)', r'(\1.html.md\2)', md)
    md = re.sub(r'<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\n*', '', md)
    md = re.sub(r'(\[source\]\([^)]+\))\{[^}]*\}', r'\1', md)
    return f'# {title}\n\n' + (f'> {desc}\n\n' if desc else '') + md.strip() + '\n'


def llms_txt(site, desc, pages, api):
    "llms.txt (llmstxt.org, the nbdev 3 convention): the chapters and the API, linking the Markdown copies of the pages."
    lines = [f'# {site}', '', f'> {desc}', '',
             'Every chapter is a notebook (nbs/) that derives a result, checks it numerically against an independent '
             'reference, and exports the tested code into the torch library `lipnotes`. Install: `make install`; '
             'open the book in JupyterLab: `make lab`.', '', '## Chapters', '']
    lines += [f'- [{title}]({html_name(name)}.md): {pdesc}' for name, title, pdesc in pages]
    lines += ['', '## API', '']
    lines += [f'- [{mod}.{name}]({page}#{anchor}): {doc}' for mod, name, page, anchor, doc in api]
    lines += ['', '## Optional', '', '- [Source of the exported modules](source/): one page per module, lines anchored']
    return '\n'.join(lines) + '\n'


def api_entries(name, body):
    "[(module, name, page, anchor, first docstring line)] for each show_doc entry of a page."
    out = []
    for m in re.finditer(r'<h3 id="([\w.-]+)"[^>]*>(\w+)</h3>', body):
        src = re.findall(r'href="source/(\w+)\.py\.html#L-\d+"', body[max(0, m.start() - 600):m.start()])
        if not src: continue
        obj = api_object(src[-1], m.group(2))
        doc = (inspect.getdoc(obj) or '').splitlines()[0] if obj is not None and inspect.getdoc(obj) else ''
        out.append((f'lipnotes.{src[-1]}', m.group(2), html_name(name), m.group(1), doc))
    return out


def api_links(body, api):
    """nbdev links an API name to `page.html#name`; where a section heading of that page took the id `name` first, the
    entry's heading got another (`digits-1`): point such links, a link whose text is the name in code, at the entry."""
    ids = {(page, name): anchor for _, name, page, anchor, _ in api}
    def fix(m):
        want = ids.get((m.group(1), m.group(4)))
        return m.group(0) if want is None else f'href="{m.group(1)}#{want}"{m.group(3)}><code>{m.group(4)}</code></a>'
    return re.sub(r'href="([\w.-]+\.html)#([\w.-]+)"([^>]*)><code>(\w+)</code></a>', fix, body)


def render_site(out_dir, proc_dir):
    names = sidebar_notebooks()
    pages = []
    for name in names:
        nb = json.loads((proc_dir / name).read_text())
        meta, md = notebook_markdown(nb)
        pages.append((name, meta, md))
    site, cfg_desc = config().get('title', 'lipnotes'), ''
    if out_dir.exists(): shutil.rmtree(out_dir)
    (out_dir / 'source').mkdir(parents=True); (out_dir / 'notebooks').mkdir()
    (out_dir / 'site.css').write_text(STYLE + highlight_css())
    (out_dir / 'minisearch.js').write_bytes(minisearch_js())
    (out_dir / 'search.js').write_text(SEARCH_JS)
    search, llm_pages = [], []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:       # pandoc runs as processes: one per core at a time
        mods = [m for m in sorted((ROOT / 'lipnotes').glob('*.py')) if not m.name.startswith('_')]
        sources = pool.map(source_page, mods)
        descs = list(pool.map(lambda p: to_html(p[1]['description']) if p[1].get('description') else '', pages))
        bodies = list(pool.map(lambda p: to_html(p[2]), pages))
        for mod, text in zip(mods, sources): (out_dir / 'source' / f'{mod.name}.html').write_text(text)
    api = [e for (name, _, _), body in zip(pages, bodies) for e in api_entries(name, body)]
    bodies = [api_links(body, api) for body in bodies]
    for i, (name, meta, md) in enumerate(pages):
        title = meta.get('title', name)
        links = '\n'.join(
            f'<li><a href="{html_name(n)}"{CURRENT if n == name else ""}>{html.escape(m.get("title", n))}</a></li>'
            for n, m, _ in pages)
        desc = meta.get('description')
        body = bodies[i]
        secs = sections(body)
        prev_, next_ = (pages[i - 1] if i else None), (pages[i + 1] if i + 1 < len(pages) else None)
        pager = '<nav class="pager" aria-label="Previous and next chapters">' + ''.join(
            f'<a class="{cls}" rel="{cls}" href="{html_name(p[0])}">{arrow}{html.escape(p[1].get("title", p[0]))}{tail}</a>'
            for cls, p, arrow, tail in (('prev', prev_, '← ', ''), ('next', next_, '', ' →')) if p) + '</nav>'
        open_line = (f'<p class="open-chapter">Run this chapter: it is the notebook <a href="notebooks/{name}" download>'
                     f'<code>nbs/{name}</code></a>; in a clone of the repository, <code>make lab</code> opens the book in '
                     f'JupyterLab with the project\'s environment as its kernel.</p>')
        page = PAGE.format(title=html.escape(title), site=html.escape(site), links=links,
                           description=descs[i].replace('<p>', '<p class="description">', 1),
                           open_line=open_line + toc_html(secs, inline=True), body=body, pager=pager, toc=toc_html(secs))
        (out_dir / html_name(name)).write_text(page)
        (out_dir / (html_name(name) + '.md')).write_text(page_markdown(title, desc, md))
        shutil.copyfile(ROOT / 'nbs' / name, out_dir / 'notebooks' / name)
        search += search_documents(html_name(name), title, desc or '', secs)
        llm_pages.append((name, title, desc or ''))
        if name == config().get('readme_nb', 'index.ipynb'): cfg_desc = desc or ''
    (out_dir / 'search-data.js').write_text(
        '// The book\'s sections for search.js: written by tools/render_docs.py\nwindow.LIPNOTES_SEARCH = '
        + json.dumps(search, ensure_ascii=False) + ';\n')
    (out_dir / 'llms.txt').write_text(llms_txt(site, cfg_desc, llm_pages, api))
    return [out_dir / html_name(n) for n in names]


def readme_links(md, pages):
    """Links to site pages, as the index notebook writes them (`core.html`) and as nbdev writes its links to API entries
    (`/power_iteration.html#spectral_normalize`), made links that work on the repository: the chapter's notebook,
    `nbs/04_power_iteration.ipynb` (GitHub renders it; show_doc anchors exist only on the site, so the anchor is dropped)."""
    def to_notebook(m):
        return f"](nbs/{pages[m.group(1)]})" if m.group(1) in pages else m.group(0)
    return re.sub(r'\]\(/?([\w.-]+\.html)(?:#[^)\s]*)?\)', to_notebook, md)


def readme_markdown(proc_dir):
    "README.md text from the processed index notebook."
    meta, md = notebook_markdown(json.loads((proc_dir / config().get('readme_nb', 'index.ipynb')).read_text()))
    md = re.sub(r'<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\n*', '', md)
    md = readme_links(md, {html_name(n): n for n in sidebar_notebooks()})
    head = f"# {meta.get('title', 'lipnotes')}\n\n"
    if meta.get('description'): head += f"> {meta['description']}\n\n"
    note = "<!-- Generated from nbs/index.ipynb by `make readme`; edit the notebook, not this file. -->\n\n"
    return note + head + md.strip() + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--readme', action='store_true', help='write README.md instead of the site')
    p.add_argument('--out', type=Path, help='site folder (default: doc_path from pyproject.toml)')
    p.add_argument('--no-proc', action='store_true', help='reuse _proc/ instead of running nbdev-proc-nbs')
    a = p.parse_args()
    proc_dir = ROOT / '_proc' if a.no_proc else proc_notebooks()
    if a.readme:
        (ROOT / 'README.md').write_text(readme_markdown(proc_dir)); print('wrote README.md'); return
    out = a.out or ROOT / config().get('doc_path', 'docs')
    for f in render_site(out, proc_dir): print('wrote', f.relative_to(ROOT) if f.is_relative_to(ROOT) else f)


if __name__ == '__main__':
    main()
