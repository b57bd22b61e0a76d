# Sphinx configuration for nntrain's site. The pages are the notebooks, executed and processed by
# `python tools/build_site.py build`, which copies this folder next to them; see that script for the steps.
import configparser
from pathlib import Path

_ini = configparser.ConfigParser()
_ini.read(Path(__file__).resolve().parent/'settings.ini')   # the builder copies the repository's settings.ini here
_cfg = _ini['DEFAULT']

project = _cfg['lib_name']
author = _cfg['author']
copyright = _cfg['copyright']
release = version = _cfg['version']

extensions = ['myst_nb']
root_doc = 'index'
exclude_patterns = ['_build', '**.ipynb_checkpoints', 'settings.ini']
source_suffix = {'.md': 'myst-nb', '.ipynb': 'myst-nb'}

# The notebooks arrive executed; Sphinx only renders them.
nb_execution_mode = 'off'
nb_output_stderr = 'show'
nb_render_markdown_format = 'myst'
nb_ipywidgets_js = {}            # no widget JavaScript from a CDN: the site loads nothing from another host
nb_mime_priority_overrides = [('html', 'image/jpeg', None)]   # PIL images come as PNG and JPEG; keep one
myst_enable_extensions = ['colon_fence', 'attrs_inline', 'attrs_block']
myst_all_links_external = True     # the builder already made every link point at a page of this site

html_theme = 'furo'
html_title = f'{project} {version}'
html_static_path = ['_static']
html_css_files = ['nntrain.css']
html_show_sourcelink = False
html_copy_source = False
# No "edit this page" button: a page is a notebook run and processed, not a file in the repository; each page names
# and links its notebook under the title instead.
html_favicon = '_static/favicon.svg'
suppress_warnings = ['myst.header']   # show_doc entries are level-3 headings, also in chapters without level-2 sections
