"""Write README.md from nbs/index.ipynb, without quarto.

    python tools/make_readme.py           # write README.md (and the images it shows, in index_files/)
    python tools/make_readme.py --check   # exit 1 if README.md or index_files/ differ from what would be written

Markdown cells are copied as they are. Code cells become ```python blocks, without `#|` directive lines;
cells marked `#| hide`, `#| include: false` or `#| echo: false` are left out (the last keeps its output).
Outputs saved in the notebook follow their cell: text as a plain block, PNG images as files in index_files/,
HTML tables (the metrics table of ProgressS) as HTML without styles or scripts.
"""
import base64, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, README, IMAGES = ROOT/'nbs'/'index.ipynb', ROOT/'README.md', 'index_files'


def _directives(source):
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r'^#\|\s*([\w-]+)\s*:?\s*(.*)$', source, re.M)}


def _text(value): return ''.join(value) if isinstance(value, list) else value


def _from_repo_root(markdown):
    "Links in the notebook are relative to nbs/, where the docs are built; the README sits one folder up."
    return re.sub(r'\]\((?!https?:|#|/)([^)]+)\)', r'](nbs/\1)', markdown)


def _outputs(cell, index, images):
    parts = []
    for j, out in enumerate(cell.get('outputs', [])):
        data = out.get('data', {})
        if out['output_type'] == 'stream' and out.get('name') == 'stdout': parts.append('```\n' + _text(out['text']).rstrip() + '\n```')
        elif 'image/png' in data:
            name = f'{IMAGES}/cell-{index}-output-{j}.png'
            images[name] = base64.b64decode(_text(data['image/png']))
            parts.append(f'![]({name})')
        elif '<table' in _text(data.get('text/html', '')):
            html = re.sub(r'<(style|script)\b.*?</\1>', '', _text(data['text/html']), flags=re.S)
            parts.append('<div>\n' + '\n'.join(l.strip() for l in html.splitlines() if l.strip()) + '\n</div>')
        elif out['output_type'] == 'execute_result' and 'text/plain' in data: parts.append('```\n' + _text(data['text/plain']).rstrip() + '\n```')
    return parts


def render(notebook=NOTEBOOK):
    "The README text and the images it links to, as {relative path: bytes}."
    cells, parts, images = json.loads(Path(notebook).read_text())['cells'], [], {}
    for i, cell in enumerate(cells):
        source = _text(cell['source'])
        if cell['cell_type'] == 'markdown': parts.append(_from_repo_root(source.strip())); continue
        if cell['cell_type'] != 'code': continue
        flags = _directives(source)
        if 'hide' in flags or flags.get('include') == 'false': continue
        code = '\n'.join(l for l in source.splitlines() if not l.startswith('#|')).strip()
        if code and flags.get('echo') != 'false': parts.append('```python\n' + code + '\n```')
        parts += _outputs(cell, i, images)
    header = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n'
    return header + '\n\n'.join(p for p in parts if p) + '\n', images


def main(check=False):
    text, images = render()
    current = {str(p.relative_to(ROOT)): p.read_bytes() for p in (ROOT/IMAGES).glob('*')} if (ROOT/IMAGES).exists() else {}
    if check:
        stale = [str(README.name)] if not README.exists() or README.read_text() != text else []
        stale += sorted(set(images) ^ set(current)) + [k for k in images if k in current and images[k] != current[k]]
        if stale: sys.exit(f'README.md is out of date with nbs/index.ipynb ({", ".join(stale)}): run python tools/make_readme.py')
        print('README.md matches nbs/index.ipynb')
        return
    for name in set(current) - set(images): (ROOT/name).unlink()
    for name, data in images.items(): (ROOT/name).parent.mkdir(exist_ok=True); (ROOT/name).write_bytes(data)
    README.write_text(text)
    print(f'wrote README.md and {len(images)} image(s)')


if __name__ == '__main__': main('--check' in sys.argv[1:])
