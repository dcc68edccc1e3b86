"""cfnft-cni, the CNI plugin (see README.md). Nothing is imported here: the plugin's start-up cost is its imports."""
