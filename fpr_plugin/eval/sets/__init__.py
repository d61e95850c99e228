"""Test-set loaders: RFW (images or ``.bin``), insightface ``.bin``, BFW, generic pair and dense CSVs.

Every loader returns an :class:`EvalSet`: the unique images of the set
(:class:`ImageSet`, decoded and aligned to 112x112 BGR on demand), the pair list
with a group and a fold per pair (:class:`PairList`) and/or an identity and a
group per image for the dense protocol, and the notes the report gives about
it. Bad input fails early with the file and line number. One module per format
(:mod:`.rfw`, :mod:`.bin`, :mod:`.bfw`, :mod:`.tables`) over :mod:`.base`.
"""
from fpr_plugin.eval.sets.base import EvalSet, ImageSet, PairList
from fpr_plugin.eval.sets.bfw import BFW_CSV_NAME, find_bfw_table, load_bfw
from fpr_plugin.eval.sets.bin import RestrictedUnpickler, UnsafePickleError, load_bin, load_rfw_bin, read_bin
from fpr_plugin.eval.sets.rfw import RFW_RACES, load_rfw, read_rfw_landmarks, read_rfw_pairs
from fpr_plugin.eval.sets.tables import load_dense_csv, load_pairs_csv

__all__ = [
    "BFW_CSV_NAME", "EvalSet", "ImageSet", "PairList", "RFW_RACES", "RestrictedUnpickler", "UnsafePickleError",
    "find_bfw_table", "load_bfw", "load_bin", "load_dense_csv", "load_pairs_csv", "load_rfw", "load_rfw_bin",
    "read_bin", "read_rfw_landmarks", "read_rfw_pairs",
]
