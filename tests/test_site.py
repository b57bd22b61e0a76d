"""The documentation site, built from the notebooks and opened page by page in a real headless Chromium.

The build (`python tools/build_site.py build`) executes every chapter, so this is also the test that each one
runs top to bottom in a real Jupyter kernel, writing nothing to stderr: the README's test command runs the notebooks
only here (not with nbdev_test too), so the build runs whether or not a browser is there. Set NNTRAIN_SITE to a built site to check that one instead
(the deploy workflow does, to publish exactly what it tested); NNTRAIN_SCREENSHOTS: where the screenshot of each
page goes (default: a pytest temporary folder);
NNTRAIN_BROWSER_TEST=required to fail, not skip, where Chromium or its driver is missing (CI sets it).
"""
import html, json, os, re, shutil, subprocess, sys, threading, urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
DRIVER = shutil.which('chromedriver')


def _need_browser():
    missing = [n for n, p in (('chromium', CHROMIUM), ('chromedriver', DRIVER)) if not p]
    try: import selenium  # noqa: F401
    except ImportError: missing.append('the selenium package')
    if not missing: return
    msg = f'the site test needs {", ".join(missing)} (Debian: apt-get install chromium chromium-driver)'
    if os.environ.get('NNTRAIN_BROWSER_TEST') == 'required': pytest.fail(msg)
    pytest.skip(msg)


_build_log = []

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site, built here (every chapter executed) unless NNTRAIN_SITE names one already built."
    if os.environ.get('NNTRAIN_SITE'): return Path(os.environ['NNTRAIN_SITE'])
    out = tmp_path_factory.mktemp('site')/'html'
    r = subprocess.run([sys.executable, 'tools/build_site.py', 'build', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1500)
    print(r.stdout[-3000:])
    assert r.returncode == 0, f'the site did not build:\n{r.stderr[-3000:]}\n--- the end of its log:\n{r.stdout[-3000:]}'
    _build_log.append(r.stdout)
    return out


@pytest.fixture(scope='module')
def server(site):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


@pytest.fixture(scope='module')
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,1400',
              '--no-first-run', '--disable-extensions', '--disable-background-networking'):
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def chapters():
    "(notebook, nbdev's page name, the page on the site) for every notebook the site is built from."
    nbs = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    found = []
    for p in nbs:
        name = 'index' if p.stem == 'index' else re.sub(r'^\d+_', '', p.stem)   # 02_learner.ipynb -> learner.html
        site_owns = name.lower() in ('index', 'search', 'genindex', 'py-modindex', 'api') and p.stem != 'index'
        found.append((p, name, p.stem if site_owns else name))   # a chapter named like the site's own pages keeps its name
    return found


def documented(page):
    "The exported functions and classes nbdev's index puts on `page`: each must have its `show_doc` entry."
    from docutils.nodes import make_id
    from nntrain._modidx import d
    names = []
    for mod, syms in d['syms'].items():
        for sym, (link, _) in syms.items():
            name = sym[len(mod) + 1:]
            if '.' in name or name.startswith('_') or not link.lower().startswith(f'{page.lower()}.html#'): continue
            names.append((name, make_id(link.split('#', 1)[1])))
    return names


def hidden_lines(nb_path):
    "Lines of code that only `#| hide` and `#| echo: false` cells contain: the page must not show them."
    cells = [c for c in json.loads(nb_path.read_text())['cells'] if c['cell_type'] == 'code']
    def is_hidden(src): return re.search(r'^#\|\s*(hide\s*$|echo:\s*false)', src, re.M)
    hidden, shown = set(), set()
    for c in cells:
        src = ''.join(c['source'])
        lines = {l.strip() for l in src.splitlines() if len(l.strip()) >= 25 and not l.strip().startswith('#')}
        (hidden if is_hidden(src) else shown).update(lines)
    return sorted(hidden - shown)


_fetched = {}
def fetch(url):
    if url not in _fetched:
        try:
            with urllib.request.urlopen(url, timeout=10) as r: _fetched[url] = (r.status, r.read().decode('utf-8', 'replace'))
        except Exception as e: _fetched[url] = (getattr(e, 'code', None) or repr(e), '')
    return _fetched[url]


def open_page(driver, url):
    "Open `url` and wait until it has loaded, article and all."
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && !!document.querySelector('article')"))


def check_page(driver, base, name, shots):
    "Open one page; return the problems found on it."
    open_page(driver, base + name)
    driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    driver.execute_script("return new Promise(done => { const wait = () => [...document.images].every(i => i.complete)"
                          " ? done() : setTimeout(wait, 50); wait(); })")
    problems = [f'console: {e["message"][:300]}' for e in driver.get_log('browser') if e['level'] == 'SEVERE']
    broken = driver.execute_script("return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                                   ".map(i => i.getAttribute('src'))")
    problems += [f'image not loaded: {src}' for src in broken]
    used = driver.execute_script(
        "return [...performance.getEntriesByType('resource').map(e => e.name),"
        " ...[...document.querySelectorAll('[src]')].map(e => e.src),"
        " ...[...document.querySelectorAll('link[href]:not([rel~=canonical])')].map(e => e.href)]")
    problems += [f'loads from another host: {u}' for u in sorted(set(used))
                 if urlparse(u).scheme in ('http', 'https') and urlparse(u).netloc != urlparse(base).netloc]
    wide = driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    if wide > 1: problems.append(f'the page scrolls sideways by {wide} px at 1280 px wide')
    hrefs = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    for href in sorted(set(hrefs)):
        url, frag = urldefrag(href)
        if urlparse(url).netloc != urlparse(base).netloc: continue
        status, body = fetch(url)
        if status != 200: problems.append(f'broken link: {href} ({status})'); continue
        if frag and f'id="{frag}"' not in body: problems.append(f'link to a missing anchor: {href}')
    shots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shots/f'{Path(name).stem}.png'))
    return problems


def test_a_page_per_notebook(site):
    "Every notebook ran top to bottom into its page, and none wrote to stderr (the build lists what did)."
    pages = {p.name for p in site.glob('*.html')}
    expected = {f'{page}.html' for _, _, page in chapters()} | {'api.html'}
    assert not expected - pages, f'pages missing from the site: {sorted(expected - pages)}'
    for log in _build_log:
        stray = [line for line in log.splitlines() if ' ran ' in line or line.lstrip().startswith('stderr in cell')]
        assert not any('stderr in cell' in line for line in stray), 'chapters wrote to stderr:\n' + '\n'.join(stray)


def test_every_page_renders_in_chromium(site, server, browser, tmp_path_factory):
    pages = sorted(p.name for p in site.glob('*.html'))
    shots = Path(os.environ.get('NNTRAIN_SCREENSHOTS') or tmp_path_factory.mktemp('screenshots'))
    print(f'screenshots of the {len(pages)} pages: {shots}')
    problems = {}
    for name in pages:
        found = check_page(browser, server, name, shots)
        if found: problems[name] = found
    assert not problems, 'problems seen in the browser:\n' + '\n'.join(
        f'{page}:\n  ' + '\n  '.join(found[:20]) for page, found in problems.items())


@pytest.mark.parametrize('nb,name,page', chapters(), ids=[p for _, _, p in chapters()])
def test_chapter_page(site, server, browser, nb, name, page):
    open_page(browser, f'{server}{page}.html')
    ids = set(browser.execute_script(
        "return [...document.querySelectorAll('section[id], h1[id], h2[id], h3[id], h4[id]')].map(e => e.id)"))
    missing = [sym for sym, a in documented(name) if a not in ids]
    assert not missing, f'{page}.html lacks the show_doc entries of {missing}'
    text = html.unescape(browser.execute_script("return document.querySelector('article').innerText"))
    shown = [line for line in hidden_lines(nb) if line in text]
    assert not shown, f'{page}.html shows code from hidden cells: {shown[:5]}'
    stderr = browser.execute_script("return [...document.querySelectorAll('.output.stderr')].map(e => e.innerText.slice(0, 200))")
    assert not stderr, f'{page}.html shows what its kernel wrote to stderr (warnings?): {stderr[:3]}'
    code_cells = browser.execute_script("return document.querySelectorAll('.cell').length")
    outputs = browser.execute_script("return document.querySelectorAll('.cell_output').length")
    if page not in ('index',) and code_cells > 3: assert outputs, f'{page}.html shows no outputs at all'


def test_nbdev_processing_runs_every_notebook(tmp_path):
    "nbdev's own docs step (`nbdev_proc_nbs`, what `nbdev_docs` and `nbdev_preview` start with) processes every chapter."
    shutil.copy(ROOT/'settings.ini', tmp_path)
    shutil.copytree(ROOT/'nbs', tmp_path/'nbs', ignore=shutil.ignore_patterns('_proc', '.ipynb_checkpoints'))
    # nbdev's processing itself (`nbdev_proc_nbs` would first try to download quarto, which is not needed for this)
    r = subprocess.run([sys.executable, '-c', 'from nbdev.serve import proc_nbs; proc_nbs(force=True)'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and 'Error' not in out, out[-4000:]
    assert 'Found cells containing imports and other code' not in out, out[-4000:]
    made = sorted(p.name for p in (tmp_path/'_proc').glob('*.ipynb'))
    assert made == sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_')), made


def test_api_reference_links_land_on_their_entries(site, server, browser):
    "Each name on the API page links to the heading of that very name (`Summary` and `summary` are two entries)."
    open_page(browser, f'{server}api.html')
    links = browser.execute_script("return [...document.querySelectorAll('article li')].map(li => li.querySelector('a'))"
                                   ".filter(a => a).map(a => [a.innerText, a.href])")
    assert len(links) >= len(chapters()), f'the API page lists only {len(links)} names'
    wrong, pages = [], {}
    for text, href in links:
        url, frag = urldefrag(href)
        if url not in pages:
            open_page(browser, url)
            pages[url] = browser.execute_script(
                "const m = {}; document.querySelectorAll('section').forEach(s => { const h = s.querySelector('h1,h2,h3,h4');"
                " const ids = [s.id, ...[...s.querySelectorAll(':scope > span[id]')].map(e => e.id)];"
                " ids.forEach(i => { if (i) m[i] = h ? h.innerText.replace(/[#¶]/g, '').trim() : ''; }); }); return m;")
        if pages[url].get(frag) != text.strip(): wrong.append(f'{text} -> {href} (lands on {pages[url].get(frag)!r})')
    assert not wrong, 'API links that land elsewhere:\n' + '\n'.join(wrong[:20])
