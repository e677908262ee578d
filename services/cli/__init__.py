"""`poscal-sync`: the operator's command line."""
