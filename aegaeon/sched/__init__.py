"""Scheduling policy: pure Python (numpy allowed, never torch).

The live engine and the simulator run this same code. Functions and small
classes here take state, the current time and a cost model, and return
decisions as dataclasses; they read no clock and do no I/O.
"""
