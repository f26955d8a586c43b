"""Code both sides import: nothing heavy behind it (standard library and small libraries only)."""
