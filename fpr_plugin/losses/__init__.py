"""fpr_plugin.losses."""
