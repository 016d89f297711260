"""Discrete-event simulator: the policy code of aegaeon.sched over a cost model,
plus the paper's baselines (ServerlessLLM, ServerlessLLM+, MuxServe)."""
