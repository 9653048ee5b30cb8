"""The bundled jinja2 templates (note and reply bodies, refusal notices), shipped as gateway.templates."""
