"""Environments decide WHERE the flow runner runs: see base.Environment."""
