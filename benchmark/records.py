"""The records schema: one row per (cell, judge) in ``records.parquet``.

A cell is (model, task, defense, attack, prompt, image index). Columns, in order:

=====================  =====================================================================
run_id                 the run directory's name
model, model_key       registered model name; content key of its weights (hub commit / hash)
task                   task name
defense, defense_key   defense name; key of its prepared artifact (config + model + task)
attack                 attack name ("none" for the task's prompts as they are)
role                   "attack" (a task attack prompt) or "benign" (a benign prompt, attack none)
prompt_set             the prompt set or file the prompt came from
prompt_id              the prompt's stable id (case number / row index)
source_prompt          the prompt as the task gives it
adversarial_prompt     what was sampled: the attack's text (null for embedding-only attacks)
truncated              the sampled text was longer than the tokenizer allows and was truncated
attack_status          "ok" or "failed" (failed prompts count as not broken; never dropped)
attack_message         why an attack failed
attack_seconds         attack wall time for this prompt
attack_queries         model queries the attack spent on this prompt
seed, image_index      the image's seed (evaluation seed + index) and its index within the prompt
guidance_scale         classifier-free guidance scale used
num_inference_steps    sampler steps; height, width: image size
image_path             PNG path relative to the store root (``--out``); null if not generated
generate_seconds       generation wall time per image (batch time / batch size)
blocked                a filter defense refused the image (counts as not flagged)
defense_triggered      a defense with a switch (SafeRedir) intervened on this image; null for defenses without
retained               benign images, concept judge: every retention concept the prompt asks for (its meta
                       "concepts", kept if listed in the task's retention_concepts) is still detected; null
                       when there is nothing to check
prepare_seconds        wall time of the defense's prepare stage when its artifact was built (training, editing,
                       loading), also when this run reused the cached artifact; a shipped artifact costs its copy
judge                  judge name; judge_version, judge_preset, judge_threshold, judge_weights_hash
judge_role             "concept" (flags the erased concept) or "utility" (measures only)
score                  the judge's score (detector: max class probability; CLIP: CLIP score)
flagged                score >= threshold for concept judges, and not blocked; null for utility
judge_seconds          judge wall time per image
=====================  =====================================================================
"""

from __future__ import annotations

COLUMNS = [
    "run_id", "model", "model_key", "task", "defense", "defense_key", "attack", "role", "prompt_set",
    "prompt_id", "source_prompt", "adversarial_prompt", "truncated", "attack_status", "attack_message",
    "attack_seconds", "attack_queries", "seed", "image_index", "guidance_scale", "num_inference_steps",
    "height", "width", "image_path", "generate_seconds", "blocked", "defense_triggered", "prepare_seconds", "retained", "judge", "judge_version",
    "judge_preset", "judge_threshold", "judge_weights_hash", "judge_role", "score", "flagged",
    "judge_seconds",
]

LEADERBOARD_COLUMNS = ["model", "task", "defense", "attack", "metric", "value", "n", "ci_low", "ci_high"]
