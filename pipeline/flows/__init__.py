"""Flows: a job config in, the stages called in order, a result out.

Owns: the checks run before Ray starts (:mod:`~pipeline.flows.preflight`), one flow per job
(:mod:`~pipeline.flows.run`) and the demo (:mod:`~pipeline.flows.demo`). Jobs (``jobs/``) parse
the command line, start Ray and call one flow.
May import: every package below it.
"""
