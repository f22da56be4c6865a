"""Reaching a budget: levers (plan choices), the --fit search, plan files, scenes and `vdeploy compare`.

levers.py (Choices, the levers) -> trial.py (one plan run per choice set) -> search.py (screen, predict, measure the
frontier, choose) -> pareto.py / report.py (table, misses, SVG scatter) · planfile.py (plan.json) · scenes.py ·
compare.py · forms.py (approximation forms for legalization)
"""
