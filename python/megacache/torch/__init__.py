"""The torch adapter: the only package of megacache that imports torch.

- `surfaces`: every torch surface the adapter relies on, checked before anything else is
  imported; it picks the level automatic mode runs at.
- `automatic`: megacache.enable(), at package level or, where torch lacks a surface, at
  Mega-Cache level.
- `mega_cache`: the Mega-Cache drop-ins (torch.compiler.save/load_cache_artifacts).
- `precompile` and `hooks`: precompile packages, on torch's private precompile classes.
- `standalone`: standalone_compile.

This file imports nothing, so that a torch whose internals moved cannot fail the import of
`surfaces`.
"""
