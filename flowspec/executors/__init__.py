"""Executors decide HOW task runs execute: see base.Executor."""
