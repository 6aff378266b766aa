"""Small shared helpers: atomic writes, content hashing."""
