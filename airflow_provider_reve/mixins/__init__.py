"""Operator glue: capabilities the operators and the sensor mix in."""
