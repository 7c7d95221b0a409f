"""lime_jax tests: unit/ (the fast tier), integration/, e2e/; fixtures in conftest.py, helpers in helpers/."""
