"""Running a job on a Ray cluster: plan.py (the submission plan behind --dry-run; pure), client.py
(the Jobs API and its tokens), local_cluster.py (a Ray head on this machine)."""
