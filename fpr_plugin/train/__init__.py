"""fpr_plugin.train."""
