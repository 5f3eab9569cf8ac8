"""Code both the control plane and the machine agent need: wire models, error codes, time helpers."""
