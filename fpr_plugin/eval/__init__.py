"""fpr_plugin.eval."""
