"""Streamlit helpers shared by the dashboard pages (the engine is ``core/``, which never imports Streamlit)."""
