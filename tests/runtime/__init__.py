"""Tests of the embedded runtime, the query client and their command line."""
