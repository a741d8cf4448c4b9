"""Dataset readers, one module per source, each registering a `Source` in `base.SOURCES` (see mtl.data.sources.base).

Deliberately empty: reader modules import base, so importing them here would be an import cycle; the registry
imports them on its first read.
"""
