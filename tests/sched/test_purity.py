"""The policy package stays pure: no torch, so the simulator and the engine share it."""

import subprocess
import sys


def test_scheduler_and_simulator_import_no_torch():
    code = (
        "import sys, aegaeon.sched.cost, aegaeon.sched.decode, aegaeon.sched.prefill, aegaeon.sched.slo, "
        "aegaeon.sched.request, aegaeon.sched.rounds, aegaeon.sched.policies, aegaeon.sched.serverless, "
        "aegaeon.sched.muxserve, aegaeon.sched.unified, aegaeon.workload, aegaeon.profiles; "
        "import aegaeon.sim.runner, aegaeon.sim.unified; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
