"""The dashboard's pages as ``st.Page`` objects: ``app.py`` hands them to ``st.navigation``, pages link to each
other through them (``st.page_link(page("data"))``), so a page's file name is written in this one place."""
from __future__ import annotations

import streamlit as st

#: name -> (script, title, icon, url path; None for the default page)
PAGES = {
    "home": ("app_pages/home.py", "Home", ":material/home:", None),
    "data": ("app_pages/data.py", "Data", ":material/library_music:", "data"),
    "experiment": ("app_pages/experiment.py", "Experiment", ":material/science:", "experiment"),
    "demo": ("app_pages/demo.py", "Demo", ":material/headphones:", "demo"),
}


def page(name: str) -> st.Page:
    """The ``st.Page`` of one page (``home``, ``data``, ``experiment``, ``demo``)."""
    script, title, icon, url_path = PAGES[name]
    if url_path is None:
        return st.Page(script, title=title, icon=icon, default=True)
    return st.Page(script, title=title, icon=icon, url_path=url_path)


def all_pages() -> list[st.Page]:
    return [page(name) for name in PAGES]
