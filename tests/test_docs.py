"""The rendered documentation, checked the way a reader sees it: in a real browser (headless Chromium).

The site is rendered afresh into a temporary folder by tools/render_docs.py (the renderer `make docs` uses when Quarto is
absent). The browser tests skip, with the reason, where no Chromium is installed; CI installs it (.ci/run).
"""
import html as htmlmod
import importlib.util
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('render_docs', ROOT / 'tools' / 'render_docs.py')
render_docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(render_docs)

CHROMIUM = next((shutil.which(c) for c in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(c)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason='no Chromium on PATH (CI installs Debian chromium; '
                                                              'apt-get install chromium to run these locally)')
API = {'core.html': ['public', 'fail', 'check_tensor', 'unit', 'leaves'],
       'lipschitz.html': ['activation_lipschitz', 'layer_rule', 'layer_constant', 'composition_bound'],
       'certificates.html': ['lipschitz_upper_bound', 'jacobian_spectral_norm', 'lipschitz_lower_bound',
                             'check_lower_bound_arguments'],
       'tight_certificates.html': ['activation_slopes', 'lipsdp_bound', 'compositional_bound', 'certify_multipliers',
                                   'exact_lipschitz', 'certified_radius', 'certified_accuracy', 'certify'],
       'frobenius.html': ['weight_matrices', 'l2_penalty', 'conv_overlap_factor', 'frobenius_lipschitz_bound'],
       'power_iteration.html': ['power_iteration', 'conv_operator_norm', 'spectral_penalty'],
       'gradient_inequality.html': ['input_grad_norm', 'param_grad_norm', 'gradient_inequality'],
       'adversarial_training.html': ['fgm', 'pgd', 'input_gradient_penalty', 'embedding_fgm', 'wgan_gradient_penalty'],
       'sharpness.html': ['SAM', 'GradientNormPenalty', 'gradient_norm_penalty', 'flooding', 'hessian_top_eigenvalue'],
       'wgan.html': ['relu_mlp', 'clip_weights', 'make_critic', 'wasserstein_step', 'clipping_step', 'gradient_penalty_step',
                     'spectral_normalization_step', 'critic_step'],
       'logit_adjustment.html': ['class_priors', 'logit_adjusted_loss', 'LogitAdjustedLoss', 'posthoc_adjust',
                                 'per_class_error', 'balanced_error']}
NO_MODULE = {'index.html'}          # pages that export nothing, so have no source links
FIGURES = {'certificates.html': 2, 'tight_certificates.html': 1,
           'frobenius.html': 1, 'power_iteration.html': 2, 'gradient_inequality.html': 1,
           'adversarial_training.html': 2, 'sharpness.html': 2, 'wgan.html': 5,
           'logit_adjustment.html': 1}


@pytest.fixture(scope='module')
def proc_dir():
    return render_docs.proc_notebooks()


@pytest.fixture(scope='module')
def site(proc_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    render_docs.render_site(out, proc_dir)
    return out


def test_readme_is_generated_from_index(proc_dir):
    assert (ROOT / 'README.md').read_text() == render_docs.readme_markdown(proc_dir), \
        'README.md is stale: run `make readme` after editing nbs/index.ipynb'


def test_readme_links_work_on_the_repository():
    "Every link in README.md is a web address or a path that exists in the checkout (GitHub resolves them relative to it)."
    links = re.findall(r'\]\(([^)\s]+)\)', (ROOT / 'README.md').read_text())
    assert len(links) >= 12, links
    for link in links:
        if re.match(r'https?://', link): continue
        assert not link.startswith('/'), f'README.md: {link!r} is site-absolute, which GitHub resolves to a missing page'
        assert (ROOT / link.split('#')[0]).exists(), f'README.md: {link!r} names no file in the repository'


def test_one_page_per_notebook_in_the_sidebar(site):
    names = render_docs.sidebar_notebooks()
    assert {p.name for p in site.glob('*.html')} == {render_docs.html_name(n) for n in names}
    assert set(names) == {p.name for p in (ROOT / 'nbs').glob('*.ipynb')}, 'every notebook belongs in nbs/sidebar.yml'


def chromium(*args):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               f'--user-data-dir={profile}', *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def visible_text(dom):
    "Text of the page outside code blocks, tags removed."
    dom = re.sub(r'<(pre|code|script|style)\b.*?</\1>', ' ', dom, flags=re.S)
    dom = re.sub(r'<math\b.*?</math>', ' MATH ', dom, flags=re.S)
    return htmlmod.unescape(re.sub(r'<[^>]+>', ' ', dom))


@needs_chromium
@pytest.mark.parametrize('page', ['index.html', 'core.html', 'data.html', 'lipschitz.html', 'frobenius.html',
                                  'power_iteration.html', 'certificates.html', 'tight_certificates.html',
                                  'gradient_inequality.html',
                                  'adversarial_training.html', 'sharpness.html', 'wgan.html', 'logit_adjustment.html'])
def test_page_in_chromium(site, page):
    dom = chromium('--dump-dom', (site / page).as_uri()).stdout
    assert '<main>' in dom and 'class="sidebar"' in dom, f'{page}: Chromium did not load the page'
    maths = re.findall(r'<math\b', dom)
    assert len(maths) >= {'index.html': 3, 'core.html': 0, 'data.html': 5}.get(page, 20), f'{page}: too few MathML elements ({len(maths)})'
    text = visible_text(dom)
    assert '$' not in text, f'{page}: raw TeX delimiters left in the text: ...{text[text.find("$") - 60:text.find("$") + 60]}...'
    leftover = re.findall(r'\\(?:sigma|frac|sqrt|Vert|le|operatorname|begin)\b', text)
    assert not leftover, f'{page}: raw TeX commands in the text: {leftover[:5]}'
    for name in API.get(page, []):
        assert re.search(rf'<h3 id="{name.lower()}"', dom), f'{page}: API entry for {name} missing'
    figures = re.findall(r'<img src="data:image/png;base64,', dom)
    assert len(figures) >= FIGURES.get(page, 0)
    sidebar = re.search(r'<nav class="sidebar">(.*?)</nav>', dom, re.S).group(1)
    sidebar_links = re.findall(r'href="([^"]+)"', sidebar)
    assert len(sidebar_links) == len(render_docs.sidebar_notebooks()) + 1
    for target, anchor in set(re.findall(r'href="([^"#:]*)(?:#([^"]*))?"', dom)):   # every local link
        # source links (../lipnotes/*.py) point into the checkout beside the site; everything else into the site
        path = (ROOT / 'docs' / target).resolve() if target.startswith('../') else site / target
        assert path.exists(), f'{page}: link to {target!r} does not resolve'
        if anchor and target.endswith('.html'):
            assert f'id="{anchor}"' in path.read_text(), f'{page}: no #{anchor} in {target}'
    assert re.search(r'href="../lipnotes/\w+\.py"', dom) or page in NO_MODULE, f'{page}: no source links'


@needs_chromium
def test_power_iteration_screenshot(site):
    "A screenshot of the chapter as Chromium draws it; kept in tests/artifacts/ (git-ignored) for a person to look at."
    import matplotlib.image as mpimg
    shot = ROOT / 'tests' / 'artifacts' / 'power_iteration.png'
    shot.parent.mkdir(exist_ok=True); shot.unlink(missing_ok=True)
    chromium(f'--screenshot={shot}', '--window-size=1280,2400', (site / 'power_iteration.html').as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1280) and img[..., :3].std() > 0.05, 'the screenshot is blank'
