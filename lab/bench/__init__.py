"""`cfnft bench`: cfnft measured beside the baselines it names (nft -f, iptables-restore, a bare
interpreter start), side by side in one run."""
