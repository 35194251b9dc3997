"""Genre Lab dashboard: ``streamlit run app.py``. Navigation (the pages: ``ui/nav.py``), set-up and the last-resort
error message; thin pages over the engine in ``core/``.

The pages live in ``app_pages/``, not ``pages/``: Streamlit (1.67) treats a ``pages/`` folder beside the main
script as an old-style multipage app until ``st.navigation`` has run once in the server process, so the first
visitor after a (re)start would get file-name navigation and pages run without this script's set-up.
"""
from ui.common import setup_environment

setup_environment()  # before librosa / numba / TensorFlow are imported anywhere

import streamlit as st  # noqa: E402

from ui.common import show_error  # noqa: E402
from ui.nav import all_pages  # noqa: E402

st.set_page_config(page_title="Genre Lab", page_icon=":material/graphic_eq:", layout="wide",
                   menu_items={"About": "Genre Lab: divide-and-conquer CRNN music-genre classification "
                                        "(after Hilsdorf 2022)."})

page = st.navigation(all_pages())
try:
    page.run()
except Exception as exc:  # noqa: BLE001 - last line of defence: a short message, the traceback in the log
    show_error(exc)
