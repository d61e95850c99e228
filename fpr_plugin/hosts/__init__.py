"""Adapters into the real host frameworks (arcface_torch, TFace); nothing else in fpr_plugin imports them."""
