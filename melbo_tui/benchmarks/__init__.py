"""`melbo-tui bench`: the fast paths against their plain baselines, and the explorer's key latency.

A face over the engine like the CLI and the explorer (it imports both), kept out of the engine
package so that the engine's modules are the algorithms and their mechanics only.
"""
