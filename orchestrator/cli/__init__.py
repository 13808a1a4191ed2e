"""The `orchestrator` command line: main.py assembles it, common.py holds what every command shares,
one module per verb group. No module outside this package imports it."""
