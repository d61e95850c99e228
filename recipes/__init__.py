"""The recipes shipped with fpr_plugin, installed as the package data ``fpr_plugin.recipes``.

Each ``<name>.py`` is an arcface_torch-style recipe (``config = EasyDict(...)``
with the keys it changes), run as code by ``fpr-train <name>.py`` or
``fpr-train <name>``; ``base.py`` lists every key with its default (it is
generated from ``fpr_plugin/train/schema.py``). Nothing here is imported by the
package: recipes are run by file.
"""
