"""fpr_plugin.data."""
