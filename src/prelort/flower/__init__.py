"""Flower apps around the federation's plan, client step and server step (only here is flwr used).

``client_app.app`` and ``server_app.app`` are the components ``flwr run .`` starts (see
``[tool.flwr.app.components]`` in pyproject.toml); ``make_client_app``/``make_server_app`` bind
them to a config for Flower's Python simulation API and tests.
"""
