"""MkDocs hooks (mkdocs.yml): the README and the changelog, which live at the repository's root,
become pages of the site; links keep working on GitHub and on the site alike. A link that leaves
the documentation for a file of the repository (an example script) becomes that file's path in
code on the site; a link to nothing is left alone, so the strict build fails on it."""
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
ROOT_PAGES = {"README.md": "readme.md", "CHANGELOG.md": "changelog.md"}  # repository file -> site page
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)#\s]+)(#[^)\s]*)?\)")


def on_files(files, config):
    for source, page in ROOT_PAGES.items():
        files.append(File.generated(config, page, content=(ROOT / source).read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    known = {file.src_uri for file in files}
    root_page = page.file.src_uri in ROOT_PAGES.values()
    here = "" if root_page else posixpath.dirname(page.file.src_uri)

    def rewrite(match):
        image, text, target, anchor = match.group(1), match.group(2), match.group(3), match.group(4) or ""
        if "://" in target or target.startswith("mailto:"):
            return match.group(0)
        # where the link points, as a path from the repository's root
        in_repo = posixpath.normpath(target if root_page else posixpath.join("docs", here, target))
        if in_repo.startswith("docs/") and in_repo[len("docs/"):] in known:
            site_target = posixpath.relpath(in_repo[len("docs/"):], here or ".")
            return f"{image}[{text}]({site_target}{anchor})"
        if in_repo in ROOT_PAGES:
            return f"{image}[{text}]({posixpath.relpath(ROOT_PAGES[in_repo], here or '.')}{anchor})"
        if (ROOT / in_repo).exists() and not image:  # a file of the repository that is not a page
            return f"{text} (`{in_repo}`)" if text != in_repo else f"`{in_repo}`"
        return match.group(0)  # a broken link: the strict build names it

    return LINK.sub(rewrite, markdown)
