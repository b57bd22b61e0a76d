#!/usr/bin/env python3
"""Build nntrain's documentation site from the notebooks, offline.

    python tools/build_site.py build [--out _site] [--jobs 2] [--only 02_learner ...]
    python tools/build_site.py check-clean        # chapters carry no outputs (index.ipynb keeps its own)

The build has four steps, each an existing tool doing what it is made for:

1. **Execute** every notebook in `nbs/` top to bottom in a real Jupyter kernel (nbclient), as a reader's
   "Run All" would, skipping the cells marked `#| eval: false`. The committed notebooks carry no outputs,
   so the site's outputs are always those of the code it shows.
2. **Process** each executed notebook with nbdev's own processors (`FilterDefaults`, the first step of
   `nbdev_docs`): frontmatter, `show_doc` for every exported name, `#| hide` cells removed, links to the API.
   One change: exported code stays on the page, below its `show_doc` entry (nbdev's default hides it), since
   nntrain is a library people read to understand every line.
3. **Convert** quarto's cell options into myst-nb's cell tags (`echo: false` -> the code is removed,
   `code-fold` -> the code is folded under its `code-summary`, ...), `show_doc` outputs into sections of the
   page, and links to the published site into links within this one; then write the API reference page.
4. **Render** with Sphinx and myst-nb (theme: furo) into a static site with no resource from another host.
"""
import argparse, functools, json, os, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600             # seconds a cell may run before the build gives up on its notebook
STAMP = '.nntrain-site'        # written into every site this script builds: the only folders it will replace
NBS, DOCS = ROOT/'nbs', ROOT/'docs'
_directive = re.compile(r'^\s*#\|\s*([\w-]+):?\s*(.*?)\s*$')


def notebooks(only=()):
    "The notebooks the site is built from, in chapter order (index first)."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    nbs = sorted(nbs, key=lambda p: (p.stem != 'index', p.name))
    if only:
        unknown = [o for o in only if not any(p.stem.startswith(o) for p in nbs)]
        if unknown: sys.exit(f'--only: no notebook in {NBS} starts with {unknown}; there are {[p.stem for p in nbs]}')
        nbs = [p for p in nbs if any(p.stem.startswith(o) for o in only)]
    return nbs


# ---- 1. execute
class NotebookFailed(Exception): pass

_ansi = re.compile(r'\x1b\[[0-9;]*m')


def execute(path, timeout=CELL_TIMEOUT):
    "Run the notebook at `path` in a fresh Jupyter kernel; return the executed notebook (an nbformat node)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    class Client(NotebookClient):
        "nbclient's runner, remembering which cell it runs, so that a failure can name it."
        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            self.current = cell_index
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == 'code' and directives(cell.source).get('eval', '').lower() == 'false':
            cell.metadata.setdefault('tags', []).append('skip-execution')
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}   # the kernel's inline backend draws the figures
    env.setdefault('OMP_NUM_THREADS', '1')
    client = Client(nb, kernel_name='python3', timeout=timeout, resources={'metadata': {'path': str(path.parent)}},
                    extra_arguments=['--IPKernelApp.log_level=ERROR'])   # not its warning about local TCP
    client.current = None
    try: client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        i = client.current
        cell = nb.cells[i] if i is not None else {}
        error = next((o for o in cell.get('outputs', []) if o.get('output_type') == 'error'), None)
        if isinstance(e, CellTimeoutError): what = f'did not finish within {timeout} s (--cell-timeout)'
        elif isinstance(e, DeadKernelError): what = 'lost its kernel (it died while this cell ran, or just before)'
        elif error: what = f"raised {error['ename']}: {_ansi.sub('', error['evalue'])}"
        else: what = f'failed: {_ansi.sub("", str(e))[-800:]}'
        where = f'cell {i} (id {cell.get("id")})' if i is not None else 'a cell'
        raise NotebookFailed(f'{path.name}: {where} {what}\n--- the cell:\n{cell.get("source", "")}') from None
    return nb


def directives(source):
    "The `#| key: value` lines at the top of a cell, as a dict."
    found = {}
    for line in source.splitlines():
        m = _directive.match(line)
        if not m:
            if line.strip(): break
            continue
        found[m.group(1)] = m.group(2).strip().strip('"\'')
    return found


def strip_directives(source):
    "`source` without its leading `#|` lines."
    lines = source.splitlines()
    while lines and (_directive.match(lines[0]) or not lines[0].strip()): lines.pop(0)
    return '\n'.join(lines)


# ---- 2. process with nbdev
def process(executed, path):
    "Run nbdev's docs processors on an executed notebook; return execnb's notebook object."
    from execnb.nbio import dict2nb
    from fastcore.foundation import L
    from nbdev import processors as P
    from nbdev.process import NBProcessor

    class SiteProcs(P.FilterDefaults):
        "nbdev's processors, except that exported code is kept on the page."
        def base_procs(self):
            return [rm_default_exp if p is P.rm_export else p for p in super().base_procs()]
        def nb_proc(self, nb): return NBProcessor(nb=nb, procs=L(self.procs()))

    def rm_default_exp(cell):
        "Remove the `#| default_exp` cells and hidden exports; keep `#| export` code."
        if cell.directives_ and cell.directives_.keys() & {'default_exp', 'exporti', 'hide'}: del cell['source']

    nb = dict2nb(json.loads(json.dumps(executed)))
    nb.path_ = str(path)
    os.environ['IN_TEST'] = '1'
    try: SiteProcs()(nb)
    finally: os.environ.pop('IN_TEST', None)
    return nb


# ---- 3. convert for myst-nb
@functools.lru_cache
def settings():
    "The project's settings.ini, read once."
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']


def site_url():
    "The published site's address, from settings.ini (nbdev's links start with it)."
    return settings()['doc_host'].rstrip('/') + '/' + settings()['doc_baseurl'].strip('/') + '/'


def notebook_url(path):
    "The notebook's page on the project's repository (from settings.ini)."
    return f"{settings()['git_url'].rstrip('/')}/blob/{settings()['branch']}/{path.relative_to(ROOT).as_posix()}"


def anchor(text):
    "The id docutils gives a section titled `text`."
    from docutils.nodes import make_id
    return make_id(text)


SITE_PAGES = {'index', 'search', 'genindex', 'py-modindex', 'api'}   # pages Sphinx or this script write: a chapter of
                                                                     # such a name keeps its notebook's name


def nbdev_name(path):
    "The page nbdev gives a notebook: `02_learner.ipynb` -> `learner`."
    return 'index' if path.stem == 'index' else re.sub(r'^\d+_', '', path.stem)


@functools.lru_cache
def site_pages():
    "Each notebook's page on this site, by the notebook's stem; two notebooks on one page are refused."
    pages, owner = {}, {name: f"the site's own {name}.html" for name in SITE_PAGES - {'index'}}
    for p in notebooks():
        name = nbdev_name(p)
        numbered = re.match(r'\d+_', p.stem)
        page = p.stem if numbered and name.lower() in SITE_PAGES else name
        if page.lower() in owner:      # pages differing only in case are one file on some systems, and one to readers
            taken = owner[page.lower()]
            sys.exit(f'{taken if taken.startswith("the site") else taken + ".ipynb"} and {p.name} would both be the page '
                     f'{page}.html: rename {p.name}')
        owner[page.lower()], pages[p.stem] = p.stem, page
    return pages


@functools.lru_cache
def page_of_nbdev_name():
    "nbdev's page name (what its links use) -> the page on this site."
    return {nbdev_name(p): site_pages()[p.stem] for p in notebooks()}


def local_links(md, base):
    "Links to the published site become links within this build (nbdev's anchors -> docutils' ids)."
    pages = page_of_nbdev_name()
    def page(name): return pages.get(name, name)
    # nbdev also links the private names it indexes (`_check_int`); they have no entry on the page, so no link
    md = re.sub(r'\[([^\]]*)\]\(' + re.escape(base) + r'[\w.-]+\.html#_[^)\s]*\)', r'\1', md)
    def fix(m):
        frag = m.group(2)
        return f'({page(m.group(1))}.html' + (f'#{anchor(frag)}' if frag else '') + ')'
    md = re.sub(r'\(' + re.escape(base) + r'([\w.-]+)\.html(?:#([^)\s]+))?\)', fix, md)
    # links between notebooks (`02_learner.ipynb`, as on GitHub) become links between pages (`learner.html`)
    return re.sub(r'\((?:nbs/)?\d+_([\w-]+)\.ipynb(#[^)\s]*)?\)', lambda m: f'({page(m.group(1))}.html{m.group(2) or ""})', md)


def is_class(name):
    "Is `name` (as a show_doc heading names it) a class of the package?"
    import importlib
    from nntrain._modidx import d
    for mod, syms in d['syms'].items():
        if f'{mod}.{name}' in syms:
            try: return isinstance(getattr(importlib.import_module(mod), name), type)
            except (ImportError, AttributeError): return False
    return False


def show_doc_markdown(md, base):
    "nbdev's `show_doc` markdown (written for quarto/pandoc) as MyST markdown."
    # nbdev writes every signature as `def`: a class is shown as one
    md = re.sub(r'^def (\w+)\(', lambda m: f'class {m.group(1)}(' if is_class(m.group(1)) else m.group(0), md, flags=re.M)
    md = re.sub(r'\A\s*---\s*\n', '', md)            # quarto's rule above each entry; the theme draws its own
    md = re.sub(r'\[source\]\((\S+?)\)\{[^}]*\}', r'<a class="sd-source" href="\1">source</a>', md)
    return local_links(md, base)


def only_imports(code):
    "Is `code` nothing but import statements (and an `if TYPE_CHECKING:` block of them)?"
    import ast
    try: tree = ast.parse(code)
    except SyntaxError: return False
    def imp(n): return isinstance(n, (ast.Import, ast.ImportFrom)) or (isinstance(n, ast.If) and all(map(imp, n.body)))
    return bool(tree.body) and all(map(imp, tree.body))


def convert(nb, base, nb_url=None):
    "Turn nbdev's processed notebook into the notebook myst-nb renders; also return its API entries."
    import nbformat
    out = nbformat.v4.new_notebook(metadata={k: v for k, v in nb.metadata.items() if k in ('kernelspec', 'language_info')})
    cells, api, fm, ids = [], [], {}, set()
    for cell in nb.cells:
        src = cell.get('source') or ''
        if cell.cell_type == 'raw' and src.startswith('---'):
            import yaml
            fm = yaml.safe_load(src.strip().strip('-')) or {}
            number = re.match(r'(\d+)_', Path(nb.path_).name)      # the prose says "chapter 05": so does the title
            head = f"# {number.group(1) + ' · ' if number else ''}{fm.get('title', '')}"
            if fm.get('description'): head += f"\n\n{fm['description']}"
            if nb_url: head += f"\n\n{{.nb-source}}\nThis page is the notebook [{nb_url.rsplit('/', 2)[-2]}/{nb_url.rsplit('/', 1)[-1]}]({nb_url}), run top to bottom."
            cells.append(nbformat.v4.new_markdown_cell(head)); continue
        if cell.cell_type == 'markdown':
            if 'AUTOGENERATED' in src and src.startswith('<!--'): continue
            ids.update(anchor(h) for h in re.findall(r'^#{1,6} (.+?)\s*$', src, re.M))
            cells.append(nbformat.v4.new_markdown_cell(local_links(src, base))); continue
        if cell.cell_type != 'code': continue
        opts = directives(src)
        if opts.get('include') == 'false': continue
        if opts.get('output') == 'asis' or 'show_doc(' in src:   # show_doc: its markdown becomes part of the page
            md = ''.join(''.join(o.get('data', {}).get('text/markdown', '')) for o in cell.get('outputs', []))
            md = show_doc_markdown(md, base)
            names = [n.strip() for n in re.findall(r'^#{2,4} (.+)$', md, re.M)]
            if names and names[0] in {a[0] for a in api}: continue      # documented once per page
            doc = re.search(r'^\*(.+)\*\s*$', md, re.M)
            for k, n in enumerate(names):
                a = anchor(n)
                if a in ids:                      # `Summary` and `summary`: docutils gives the second a numbered id
                    a = next(f'{a}-{j}' for j in range(2, 999) if f'{a}-{j}' not in ids)
                    md = re.sub(r'^(#{2,4} ' + re.escape(n) + r')\s*$', f'({a})=\n\\1', md, count=1, flags=re.M)
                ids.add(a)
                api.append((n, a, doc.group(1) if doc and k == 0 else ''))
            new = nbformat.v4.new_markdown_cell(md); new.metadata['show_doc'] = True
            cells.append(new); continue
        code = strip_directives(src)
        outputs = [o for o in cell.get('outputs', []) if not any('widget' in k for k in o.get('data', {}))]
        if not code.strip() and not outputs: continue
        new = nbformat.v4.new_code_cell(code, outputs=[nbformat.from_dict(o) for o in outputs],
                                        execution_count=cell.get('execution_count'))
        tags = []
        if opts.get('echo') == 'false': tags.append('remove-input')
        if opts.get('output') == 'false': tags.append('remove-output')
        if opts.get('code-fold') in ('true', 'show'):   # folded: tests, their code and what they print, under one line
            tags.append('hide-cell' if outputs else 'hide-input')
            summary = opts.get('code-summary', 'Code')
            new.metadata['mystnb'] = {'code_prompt_show': summary, 'code_prompt_hide': summary}
        if (getattr(cell, 'directives_', None) or {}).keys() & {'export', 'exports'}:   # nbdev took the line out
            new.metadata['exported'] = True
            if only_imports(code) and 'hide-input' not in tags:   # a module's imports: one click away, not a wall
                tags.append('hide-input')
                new.metadata['mystnb'] = {'code_prompt_show': 'Imports', 'code_prompt_hide': 'Imports'}
        if tags: new.metadata['tags'] = tags
        cells.append(new)
    # nbdev puts each exported cell's show_doc after it; the page reads better heading first, then the code.
    i = 0
    while i < len(cells):
        if cells[i].metadata.pop('exported', False):
            j = i + 1
            while j < len(cells) and cells[j].metadata.get('show_doc'): j += 1
            if j > i + 1: cells[i:j] = cells[i+1:j] + [cells[i]]; i = j; continue
        i += 1
    for c in cells: c.metadata.pop('show_doc', None); c.metadata.pop('exported', None)
    out.cells = cells
    page = site_pages()[Path(nb.path_).stem]
    return page, fm.get('title', page), out, api


def _die_with_parent():
    "In a child: be killed when the build is (Linux); elsewhere a killed build leaves its worker to finish its notebook."
    try:
        import ctypes, signal
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError): pass


def build_page_in_subprocess(path, src_dir, timeout):
    "`build_page` in a process of its own, so no notebook's state reaches another's."
    # Output goes to a file, not a pipe: a process the notebook leaves behind would hold a pipe open, and the build
    # would wait for it forever.
    with tempfile.TemporaryFile('w+') as log:
        r = subprocess.run([sys.executable, __file__, 'page', str(path), str(src_dir), '--cell-timeout', str(timeout)],
                           cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
        log.seek(0); text = log.read().strip()
    if r.returncode:
        if 'NotebookFailed: ' in text: failure = text[text.rindex('NotebookFailed: ') + 16:]
        else:   # failed outside a cell (nbdev's processing, the conversion): its errors first, then the end of the log
            errors = [l for l in text.splitlines() if re.match(r'^\w*(Error|Exception)\b.*:', l)]
            failure = f'{path.name}: ' + '\n'.join(errors[:3]) + '\n--- the end of its log:\n' + text[-3000:]
        raise RuntimeError(_ansi.sub('', failure))
    return json.loads(text.splitlines()[-1])


def build_page(path, src_dir, base, timeout=CELL_TIMEOUT):
    "Execute, process and convert one notebook; write it to `src_dir`; return what the index and API page need."
    import nbformat
    t0 = time.time()
    executed = execute(path, timeout)
    t1 = time.time()
    page, title, nb, api = convert(process(executed, path), base, notebook_url(path))
    nbformat.write(nb, src_dir/f'{page}.ipynb')
    stray = [(i, o.get('text', '')[:200]) for i, c in enumerate(executed.cells) for o in c.get('outputs', [])
             if o.get('output_type') == 'stream' and o.get('name') == 'stderr']
    return dict(nb=path.name, page=page, title=title, api=api, stray=stray, run_s=t1 - t0, proc_s=time.time() - t1)


def api_page(pages):
    "The API reference: every `show_doc` entry of the book, chapter by chapter, linked to its section."
    lines = ['# API reference', '', 'Every name the chapters document, in the order the book introduces them. '
             'Each links to its entry in the chapter that introduces it: signature, docstring, parameters, and the code.', '']
    seen = set()
    for p in pages:
        entries = [e for e in p['api'] if e[0] not in seen]     # a name shown again by a later chapter: its first entry
        seen.update(e[0] for e in entries)
        if not entries: continue
        lines += [f"## {p['title']}", '']
        lines += [f"- [`{name}`]({p['page']}.html#{a})" + (f': {doc}' if doc else '') for name, a, doc in entries]
        lines.append('')
    return '\n'.join(lines)


def add_toc(index, chapters):
    "Give the home page the book's navigation: the chapters in order, then the API reference."
    import nbformat
    if not index.exists(): nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# nntrain')]), index)
    nb = nbformat.read(index, as_version=4)
    toc = '```{toctree}\n:hidden:\n:caption: Chapters\n\n' + '\n'.join(chapters) + '\n```\n\n'
    toc += '```{toctree}\n:hidden:\n:caption: Reference\n\napi\n```'
    nb.cells.append(nbformat.v4.new_markdown_cell(toc))
    nbformat.write(nb, index)


def is_site(folder):
    "Does `folder` hold a site this script built (the only kind of folder it will replace)?"
    return (folder/STAMP).is_file() and (folder/'index.html').is_file()


def _alive(pid):
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: pass
    return True


def clear_leftovers(out):
    "Remove what killed builds into `out` left beside it; if one died between its two renames, put the old site back."
    for work in out.parent.glob(f'.{out.name}-building-*'):
        pid = work.name.rsplit('-', 1)[-1]
        if not pid.isdigit() or _alive(int(pid)): continue
        if not out.exists() and is_site(work/'old'): (work/'old').rename(out); print(f'put back the site a killed build had moved aside: {out}')
        shutil.rmtree(work, ignore_errors=True)


def build(out, jobs, only=(), timeout=CELL_TIMEOUT):
    "Build the site into `out`, replacing it only once the new one is complete; print what each step took."
    t0, out = time.time(), Path(os.path.normpath(Path(out).absolute()))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1: sys.exit(f'--jobs expected an int >= 1, got {jobs!r}')
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        sys.exit(f'--cell-timeout expected a number of seconds >= 1, got {timeout!r}')
    site_pages()                                      # two notebooks on one page: refused before anything runs
    if out == ROOT or ROOT.is_relative_to(out): sys.exit(f'refusing to build into {out}: it holds the repository')
    if out.parent.is_dir(): clear_leftovers(out)
    if out.is_file() or out.is_symlink(): sys.exit(f'refusing to replace {out}: it is a file or a link; give --out a folder')
    if out.exists() and not (is_site(out) or not any(out.iterdir())):
        sys.exit(f'refusing to replace {out}: it is not a site built by this script (it has no {STAMP} file); '
                 'give --out a new or empty folder')
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # beside `out`, so that two renames swap the sites; the name carries our pid, for clear_leftovers
        work = out.parent/f'.{out.name}-building-{os.getpid()}'
        work.mkdir()
    except OSError as e: sys.exit(f'cannot write beside {out}: {e}')
    try:
        _build(work/'html', jobs, only, work/'src', t0, timeout)
        if out.exists(): out.rename(work/'old')
        (work/'html').rename(out)
    finally: shutil.rmtree(work, ignore_errors=True)
    print(f'== site built in {time.time() - t0:.0f}s: {out}/index.html')


def _build(out, jobs, only, src, t0, timeout):
    src.mkdir(parents=True)
    for f in DOCS.iterdir():
        if f.is_dir(): shutil.copytree(f, src/f.name)
        else: shutil.copy2(f, src/f.name)
    if (NBS/'images').exists(): shutil.copytree(NBS/'images', src/'images')
    (src/'settings.ini').write_bytes((ROOT/'settings.ini').read_bytes())    # conf.py reads the project's facts here
    pages, failed = [], []
    todo = notebooks(only)
    print(f'== executing and processing {len(todo)} notebooks with {jobs} workers', flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        futs = {pool.submit(build_page_in_subprocess, p, src, timeout): p for p in todo}
        for f in as_completed(futs):
            try: r = f.result()
            except Exception as e:
                failed.append(futs[f].name); print(f'FAILED {e}', flush=True); continue
            pages.append(r)
            print(f"  {r['nb']:28} ran {r['run_s']:5.1f}s, nbdev {r['proc_s']:4.1f}s -> {r['page']}.html", flush=True)
            for i, text in r['stray']: print(f"    stderr in cell {i}: {text.strip().splitlines()[0][:150]}")
    if failed: sys.exit(f'the site was not built: {len(failed)} notebook(s) failed: {failed}')
    order = {p.name: i for i, p in enumerate(todo)}
    pages.sort(key=lambda r: order[r['nb']])
    (src/'api.md').write_text(api_page(pages))
    add_toc(src/'index.ipynb', [r['page'] for r in pages if r['page'] != 'index'])
    t1 = time.time()
    print(f'== rendering with Sphinx ({t1 - t0:.0f}s so far)', flush=True)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', str(jobs), '-W', '--keep-going', '-d', str(src.parent/'doctrees'), str(src), str(out)]
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode: sys.exit(f'sphinx-build failed ({r.returncode}): {" ".join(cmd)}')
    (out/'.nojekyll').touch()     # GitHub Pages: serve _static/ and friends as they are
    (out/STAMP).write_text('A site built by tools/build_site.py, which replaces only folders holding this file.\n')
    print(f'== rendered {len(pages)} notebooks and the API reference')


def check_clean():
    "The chapter notebooks are committed without outputs; index.ipynb keeps its outputs (the README shows them)."
    bad, mixed = [], []
    found = sorted(p for p in NBS.rglob('*.ipynb') if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts))
    for p in found:
        if p.relative_to(NBS).as_posix() == 'index.ipynb': continue
        try:
            nb = json.loads(p.read_text())
            cells = [c for c in nb['cells'] if c['cell_type'] == 'code']
        except (OSError, ValueError, TypeError, KeyError) as e:
            bad.append(f'{p.relative_to(ROOT)}: not a notebook ({type(e).__name__}: {e})'); continue
        n = sum(bool(c.get('outputs')) or c.get('execution_count') is not None for c in cells)
        if n: bad.append(f'{p.relative_to(ROOT)}: {n} code cell(s) with outputs or an execution count')
        mixed += [f'{p.relative_to(ROOT)}: code cell {i} (id {c.get("id")})' for i, c in enumerate(nb['cells'])
                  if c['cell_type'] == 'code' and _imports_and_code(''.join(c['source']))]
    if bad:
        sys.exit('chapters are committed without outputs (the site build executes them); clear these with '
                 '`jupyter nbconvert --clear-output --inplace` or your editor:\n  ' + '\n  '.join(bad))
    if mixed:
        sys.exit('a cell that imports holds only imports (nbdev runs every importing cell again, alone, to build the '
                 "page, and the rest of it fails there); move these cells' imports to the chapter's import cell:\n  "
                 + '\n  '.join(mixed))
    print('chapters carry no outputs, and their importing cells only import')


def _imports_and_code(source):
    "Would nbdev's page processing run this cell on its own (it imports) though it also does other work?"
    import ast
    d = directives(source)
    if d.keys() & {'export', 'exports', 'exporti', 'exec_doc'} or d.get('eval', '').lower() == 'false': return False
    try: tree = ast.parse('\n'.join(l for l in source.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return False
    nodes = list(ast.walk(tree))
    return any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and any(isinstance(n, (ast.Expr, ast.Assign)) for n in nodes)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='execute the notebooks and render the site')
    b.add_argument('--out', default=str(ROOT/'_site'), help='where the site is written (default: _site)')
    b.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1), help='notebooks executed at once')
    b.add_argument('--only', nargs='+', default=(), help='build only the notebooks whose names start with these')
    b.add_argument('--cell-timeout', type=int, default=CELL_TIMEOUT, help=f'seconds a cell may run (default {CELL_TIMEOUT})')
    sub.add_parser('check-clean', help='fail if a chapter notebook carries outputs, or a cell that imports does other work')
    pg = sub.add_parser('page', help='(used by build) execute, process and convert one notebook')
    pg.add_argument('notebook'); pg.add_argument('src_dir'); pg.add_argument('--cell-timeout', type=int, default=CELL_TIMEOUT)
    a = ap.parse_args()
    if a.cmd == 'build': build(a.out, a.jobs, a.only, a.cell_timeout)
    elif a.cmd == 'page': print(json.dumps(build_page(Path(a.notebook), Path(a.src_dir), site_url(), a.cell_timeout)))
    else: check_clean()
