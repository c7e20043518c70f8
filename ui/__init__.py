"""Helpers shared by the Streamlit pages (store access, cached views, widgets). The pages stay thin."""
