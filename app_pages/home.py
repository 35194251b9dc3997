"""Home: what Genre Lab does, the divide-and-conquer idea drawn from a real computation, where to go next."""
import streamlit as st

from core.synth import divide_and_conquer_example
from core.workspace import data_home, list_datasets
from ui.common import guarded
from ui.nav import page
from ui.state import available_models, experiment_overview
from ui.svg_figures import divide_and_conquer_svg


@st.cache_data(show_spinner="Cutting a track into snippets ...")
def _example() -> tuple[dict, str]:
    """The example's facts and its figure as SVG (static: no plotly.js on the first page a visitor sees)."""
    ex = divide_and_conquer_example()
    facts = {k: ex[k] for k in ("duration_s", "true_class", "intruder_class", "snippet_s", "overlap_s")}
    facts["n_snippets"] = len(ex["starts"])
    return facts, divide_and_conquer_svg(ex)


@guarded()
def main() -> None:
    st.title("Genre Lab")
    st.markdown(
        "Genre Lab classifies music by genre **the divide-and-conquer way**: it cuts every track into short "
        "overlapping snippets, lets a small convolutional-recurrent network (CRNN) judge each snippet, and adds "
        "the snippets' votes up into one answer for the whole track. "
        "It reproduces *Hilsdorf (2022)*, where voting over 3-second snippets beat a model that hears the whole "
        "30-second clip at once, and tests that claim over many seeds. "
        "Everything runs here: build a dataset from your own folders of music, train and compare the models, "
        "and try any trained model on a clip of your own.")

    st.subheader("The idea, computed")
    ex, svg = _example()
    st.image(svg, width="stretch", alt="the divide-and-conquer idea, computed")
    st.caption(
        f"A {ex['duration_s']:.0f}-second synthetic “{ex['true_class']}” texture with a passage that sounds like "
        f"“{ex['intruder_class']}”, computed live. It is cut into {ex['n_snippets']} snippets of "
        f"{ex['snippet_s']:g} s overlapping by {ex['overlap_s']:g} s (the article's setting); each snippet gets a "
        "score per class, and the scores are summed. A snippet can be fooled, the sum rarely is. "
        "(Here the scores come from a simple spectral template matcher so the page works without a model; in "
        "the lab a CRNN scores the snippets.)")

    st.subheader("Where to go")
    home = data_home()
    n_ds = sum(1 for d in list_datasets(home) if d["complete"])
    n_models = sum(1 for m in available_models() if m.get("card") and not m.get("error"))
    exp = experiment_overview()
    c1, c2, c3 = st.columns(3, border=True)
    with c1:
        st.page_link(page("data"), label="**Data**")
        st.write("Point at a folder of music (one sub-folder per genre), upload a zip or download Emotify or "
                 "GTZAN, and build a snippet dataset. Explore tracks, snippets and spectrograms.")
        st.caption(f"{n_ds} dataset{'s' if n_ds != 1 else ''} built" if n_ds else "No dataset built yet.")
    with c2:
        st.page_link(page("experiment"), label="**Experiment**")
        st.write("Train the snippet CRNN, the 30 s CRNN and a linear reference baseline over several seeds in "
                 "the background; compare segment-, track- and clip-level accuracy with each other and with the "
                 "published figures.")
        st.caption(exp)
    with c3:
        st.page_link(page("demo"), label="**Demo**")
        st.write("Upload or record a clip of any length and watch every window vote; hear the window you "
                 "click and see how the votes add up.")
        st.caption(f"{n_models} model{'s' if n_models != 1 else ''} ready" if n_models else
                   "No model yet: the page shows how to get one.")
    st.caption(f"Data folder: `{home}` (set `GENRELAB_HOME` to use another).")


main()
