"""MkDocs hook: the docstrings' reST cross-reference roles as links in the API reference.

The docstrings name other objects the Sphinx way (:class:`CrowdsPooled`,
:func:`~affectnet_tf.make_dataset`), which Markdown would show verbatim. This hook turns each
role into an optional mkdocs-autorefs reference: a link where the object is documented on the
site, plain code where it is not (so it never fails the strict build). A name without dots is
looked up among the objects documented on the same page; ``~`` shows the last part only.
"""

import re

__all__ = ["ROLE", "link_roles", "on_page_content"]

ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):<code>(~?)([\w.]+?)(\(\))?</code>")
_OBJECT_ID = re.compile(r'id="([A-Za-z_]\w*(?:\.\w+)+)"')


def link_roles(html):
    """``html`` with every ``:role:<code>name</code>`` replaced by an optional autoref."""
    by_name = {}
    for identifier in _OBJECT_ID.findall(html):
        by_name.setdefault(identifier.rsplit(".", 1)[1], set()).add(identifier)

    def link(match):
        tilde, name, call = match.groups()
        text = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
        candidates = by_name.get(name, set()) if "." not in name else set()
        identifier = next(iter(candidates)) if len(candidates) == 1 else name
        return f'<autoref optional identifier="{identifier}"><code>{text}</code></autoref>'

    return ROLE.sub(link, html)


def on_page_content(html, page, config, files, **kwargs):
    return link_roles(html)
