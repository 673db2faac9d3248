"""The harness: everything that turns a run's config into records, above the components and below the CLI.

    config, provenance        what a run is (RunConfig, suites) and what it records about itself
    resolve, stages, contracts  the plan, checked before any work; the stages prepare -> attack -> generate
                              -> judge, each a function of (plan, store); the contracts components are held to
    sharing, runner           cells shared between processes; one run from plan to records and leaderboard
    scale, executors, transfer, ci
                              several processes (torchrun, submitit); replays across defenses; the CI check

Nothing here is imported by a defense, an attack, a judge or a report (``lint-imports`` keeps it so).
"""
