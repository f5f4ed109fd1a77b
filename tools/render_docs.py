"""Render lipnotes' documentation site (and README.md) from the notebooks without Quarto.

nbdev-docs needs Quarto, which many machines (these included) cannot install. This renders the same input, the notebooks
as `nbdev-proc-nbs` processes them into `_proc/` (frontmatter in a raw cell, show_doc cells executed, export cells dropped,
cell options such as `#| echo: false` and `#| output: asis` added), into one HTML page per notebook with pandoc: math as
MathML (no JavaScript, no network), figures embedded as PNG data, a sidebar from `nbs/sidebar.yml`.

    python tools/render_docs.py            # nbdev-proc-nbs, then the site into docs/ (pyproject's doc_path)
    python tools/render_docs.py --readme   # README.md from nbs/index.ipynb
"""
import argparse, base64, html, json, re, shutil, subprocess, sys, tomllib
from pathlib import Path

import pypandoc
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
OPTION = re.compile(r'^#\|\s*([\w-]+)\s*:\s*(.*)$')
CURRENT = ' class="current"'
MATH_FAILURE = re.compile(r'Could not convert TeX math|Could not render TeX math', re.I)


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


def output_markdown(out):
    "Markdown (with raw HTML where needed) for one cell output."
    kind = out['output_type']
    if kind == 'stream': return fence(ANSI.sub('', ''.join(out['text'])), 'text')
    if kind == 'error': return fence(ANSI.sub('', '\n'.join(out['traceback'])), 'text')
    data = out.get('data', {})
    if 'image/png' in data:
        png = ''.join(data['image/png']).replace('\n', '')
        base64.b64decode(png, validate=True)
        return f'<figure class="cell-figure"><img src="data:image/png;base64,{png}" alt="figure"></figure>'
    if 'text/markdown' in data:
        return ''.join(data['text/markdown'])
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


def to_html(markdown):
    "pandoc markdown -> HTML5 fragment, math as MathML; fails on math pandoc cannot convert."
    proc = subprocess.run([pypandoc.get_pandoc_path(), '--from', 'markdown', '--to', 'html5', '--mathml', '--wrap=none'],
                          input=markdown, capture_output=True, text=True)
    if proc.returncode or MATH_FAILURE.search(proc.stderr):
        raise SystemExit(f'render_docs: pandoc failed:\n{proc.stderr}')
    # nbdev writes site-absolute links (/power_iteration.html#...); make them relative so the site works from any folder
    out = re.sub(r'href="/([\w.-]+\.html)', r'href="\1', proc.stdout)
    # show_doc's [source] links: without a repository URL nbdev writes /blob/<branch>/<path>#L<n>; point them at the file
    # in the checkout, next to the site folder
    return re.sub(r'href="/blob/[\w.-]+/([\w./-]+\.py)(#L\d+)?"', r'href="../\1"', out)


STYLE = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.55;color:#222}
.layout{display:flex;min-height:100vh}
nav.sidebar{flex:0 0 15rem;background:#f5f6f8;border-right:1px solid #ddd;padding:1.2rem 1rem;
  position:sticky;top:0;height:100vh;box-sizing:border-box}
nav.sidebar .site{font-weight:700;font-size:1.2rem;display:block;margin-bottom:1rem;color:#222;text-decoration:none}
nav.sidebar ul{list-style:none;padding:0;margin:0} nav.sidebar li{margin:.35rem 0}
nav.sidebar a{color:#1a5fb4;text-decoration:none} nav.sidebar a.current{font-weight:700;color:#222}
main{flex:1;max-width:64rem;padding:1.5rem 2.5rem 4rem}
h1.title{margin-bottom:.2rem} p.description{font-size:1.1rem;color:#555;margin-top:0}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:.6rem .8rem;overflow-x:auto;font-size:.85rem}
code{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
figure.cell-figure{margin:1rem 0} figure.cell-figure img{max-width:100%}
table{border-collapse:collapse} th,td{border:1px solid #ccc;padding:.25rem .6rem}
details.code-fold summary{cursor:pointer;color:#555}
math[display="block"]{margin:.8rem 0;overflow-x:auto;overflow-y:hidden;padding:.2rem 0}
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site}</title><style>{style}</style></head>
<body><div class="layout">
<nav class="sidebar"><a class="site" href="index.html">{site}</a><ul>
{links}
</ul></nav>
<main><h1 class="title">{title}</h1>
{description}
{body}
</main></div></body></html>
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


def render_site(out_dir, proc_dir):
    names = sidebar_notebooks()
    pages = []
    for name in names:
        nb = json.loads((proc_dir / name).read_text())
        meta, md = notebook_markdown(nb)
        pages.append((name, meta, md))
    site = config().get('title', 'lipnotes')
    if out_dir.exists(): shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name, meta, md in pages:
        links = '\n'.join(
            f'<li><a href="{html_name(n)}"{CURRENT if n == name else ""}>{html.escape(m.get("title", n))}</a></li>'
            for n, m, _ in pages)
        desc = meta.get('description')
        page = PAGE.format(title=html.escape(meta.get('title', name)), site=html.escape(site), style=STYLE, links=links,
                           description=to_html(desc).replace('<p>', '<p class="description">', 1) if desc else '',
                           body=to_html(md))
        (out_dir / html_name(name)).write_text(page)
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
