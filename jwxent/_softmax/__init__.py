"""Softmax family: the custom-JVP core, input preparation and the public losses."""
