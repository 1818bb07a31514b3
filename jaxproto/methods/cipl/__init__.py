"""CIPL: cross- and intra-image prototypical learning (cipl.md)."""
