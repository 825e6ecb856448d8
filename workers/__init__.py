"""Data plane: decode -> SAM 3 -> masks -> composite -> outputs. Imports the heavy stack."""
