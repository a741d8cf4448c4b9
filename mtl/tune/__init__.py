"""`mtl tune`: a Ray Tune search of a `tune/NAME.yaml` space, every trial a Ray Train run of the config.

space (the YAML grammar of search spaces -> Ray Tune distributions), trial (what one trial runs: its config, its
Train run, each epoch reported to Tune), search (the config of a search, the scheduler and searcher, the Tune run
and its restore), results (results.csv, best.yaml, the printed table), stage (`SearchStage`: the search before the
students in `mtl pipeline`, tune.before_students). Imports are absolute, so `ray.tune` stays Ray's.
"""
