"""Behaviours as data and the pure functions that judge a response against them."""
