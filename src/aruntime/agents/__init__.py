"""Durable agent runs: flows of journaled steps, tool calls and human waits."""
