"""Shared kernel: CloudEvent model, errors, settings pieces, logging, clock, client factories."""
