"""Jinja2 templates for config.pbtxt and Triton Python-backend models, rendered by svc-deploy."""
