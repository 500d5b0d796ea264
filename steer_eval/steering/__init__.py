"""Steering tokens and vectors, how they are assembled into a prompt, and the model folders they belong to."""
