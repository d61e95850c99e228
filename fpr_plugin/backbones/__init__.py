"""fpr_plugin.backbones."""
