"""`vdeploy matrix release.yaml`: every model × target × precision of a release as a Ray task.

release.py (the file, cells) · cellkey.py (resume) · task.py (a worker's build) · runner.py (Ray) ·
report.py (progress, release.json, release.html) · cli.py (the command body)
"""
