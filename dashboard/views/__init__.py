"""One file per page; app.py lists them in st.navigation."""
