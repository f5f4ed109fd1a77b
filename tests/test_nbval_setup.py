"""The nbval configuration does what the README says: notebooks cleaned by nbdev-clean (execution counts null, outputs
kept) are compared output by output, a wrong stored output fails, and `#| slow` cells skip unless LIPNOTES_SLOW=1."""
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ['pytester']


def cleaned_notebook(printed_value, slow_cell=False):
    "A notebook as nbdev-clean leaves it: execution_count null, outputs kept."
    cells = [{'cell_type': 'code', 'execution_count': None, 'id': 'a1', 'metadata': {}, 'source': 'x = 6 * 7\nprint(x)',
              'outputs': [{'output_type': 'stream', 'name': 'stdout', 'text': f'{printed_value}\n'}]}]
    if slow_cell:
        cells.append({'cell_type': 'code', 'execution_count': None, 'id': 'a2', 'metadata': {},
                      'source': '#| slow\nraise RuntimeError("a slow cell ran")', 'outputs': []})
    return json.dumps({'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3',
                                                                   'language': 'python'}},
                       'nbformat': 4, 'nbformat_minor': 5})


@pytest.fixture
def project(pytester):
    shutil.copy(ROOT / 'conftest.py', pytester.path / 'conftest.py')
    shutil.copy(ROOT / 'nbval_sanitize.cfg', pytester.path / 'nbval_sanitize.cfg')
    return pytester


def run(p, *extra):
    return p.runpytest_subprocess('--nbval', '--nbval-current-env', '--nbval-sanitize-with', 'nbval_sanitize.cfg',
                                  '-p', 'no:cacheprovider', *extra)


def test_cleaned_notebook_is_compared(project):
    (project.path / 'good.ipynb').write_text(cleaned_notebook(42))
    run(project).assert_outcomes(passed=1)


def test_wrong_stored_output_fails(project):
    (project.path / 'bad.ipynb').write_text(cleaned_notebook(41))
    result = run(project)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['*Cell outputs differ*'])


def test_slow_cells_skip_unless_asked(project, monkeypatch):
    (project.path / 'slow.ipynb').write_text(cleaned_notebook(42, slow_cell=True))
    monkeypatch.delenv('LIPNOTES_SLOW', raising=False)
    run(project).assert_outcomes(passed=1, skipped=1)
    monkeypatch.setenv('LIPNOTES_SLOW', '1')
    run(project).assert_outcomes(passed=1, failed=1)
