"""``recall demo``: the whole product on a synthetic campus, in one command.

``run`` does the work in phases (population, import, churn model, tiers, simulation,
figures); ``story`` tells what happened, in the terminal and as ``reports/demo.html``;
``cli`` is the command and its progress lines.
"""
