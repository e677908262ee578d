"""Test support: real infrastructure fixtures and builders shared by the suites."""
