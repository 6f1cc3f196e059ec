"""Test-only behaviour injected into engines by tests (never shipped in the package)."""
